"""The control socket: JSON lines between the CLI (or the kernel extension) and a daemon.

Requests: ``{"op": "snapshot", "label": str, "meta": {...}, "wait": bool, "lazy": bool}``,
``{"op": "status"}``,
``{"op": "flush"}``, ``{"op": "list", "store": str}`` (list the snapshots taken, when the daemon
serves that store), ``{"op": "rotate"}`` (finish the current pack so gc may rewrite it),
``{"op": "stop"}``. Every reply is one line ``{"ok": true, ...}`` or
``{"ok": false, "error": "what happened and what to do"}``. The socket is 0600 in a 0700
directory, and a peer of another uid is refused before its request is read.

Nothing a client sends or withholds may take the mount down: a request is bounded in size
and nesting, every handler error becomes an error reply, a connection that sends no complete
request within ``REQUEST_TIMEOUT`` is closed, at most ``MAX_CONNECTIONS`` wait at once (the
longest-waiting idle one makes room for a new one), and ``accept`` errors (no file
descriptors left) are waited out.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import struct
from pathlib import Path
from typing import Any, Awaitable, Callable

import trio

log = logging.getLogger(__name__)
MAX_REQUEST_BYTES = 1 << 20
REQUEST_TIMEOUT = 10.0  # to send one request line; handling it may take longer (snap --wait)
MAX_CONNECTIONS = 64
Handler = Callable[[dict], Awaitable[dict]]


class RequestError(Exception):
    """A request the daemon refuses; the message goes back to the client."""


def peer_uid(sock: trio.socket.SocketType) -> int:
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", creds)[1]


async def read_line(stream: trio.SocketStream, limit: int = MAX_REQUEST_BYTES) -> bytes | None:
    buffer = bytearray()
    while b"\n" not in buffer:
        chunk = await stream.receive_some(65536)
        if not chunk:
            return bytes(buffer) or None
        buffer += chunk
        if len(buffer) > limit:
            raise RequestError("request too large")
    return bytes(buffer.split(b"\n", 1)[0])


def parse_request(line: bytes) -> dict:
    try:
        request = json.loads(line)
    except (ValueError, UnicodeDecodeError) as exc:
        raise RequestError(f"malformed request (not JSON): {exc}") from None
    except RecursionError:
        raise RequestError("malformed request: nested too deeply") from None
    if not isinstance(request, dict) or not isinstance(request.get("op"), str):
        raise RequestError('malformed request: expected an object with an "op" string')
    return request


async def serve(path: Path, handler: Handler, task_status=trio.TASK_STATUS_IGNORED) -> None:
    listener = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    if path.exists() or path.is_symlink():
        path.unlink()
    old_umask = os.umask(0o177)
    try:
        await listener.bind(str(path))
    finally:
        os.umask(old_umask)
    os.chmod(path, 0o600)
    listener.listen(16)
    idle = _IdleConnections()
    try:
        async with trio.open_nursery() as nursery:
            task_status.started()
            while True:
                try:
                    conn, _ = await listener.accept()
                except OSError as exc:  # EMFILE, ENFILE, ENOBUFS...: wait for descriptors to come back
                    log.warning("control socket: accept failed (%s); retrying", exc)
                    await trio.sleep(0.1)
                    continue
                idle.make_room()
                nursery.start_soon(_serve_connection, conn, handler, idle)
    finally:
        listener.close()
        try:
            path.unlink()
        except FileNotFoundError:
            pass


class _IdleConnections:
    """Connections waiting for a request line, oldest first, each with the scope that ends it."""

    def __init__(self) -> None:
        self.waiting: dict[int, trio.CancelScope] = {}
        self.count = 0

    def make_room(self) -> None:
        self.count += 1
        if self.count > MAX_CONNECTIONS and self.waiting:
            oldest = next(iter(self.waiting))
            self.waiting.pop(oldest).cancel()


async def _serve_connection(conn: trio.socket.SocketType, handler: Handler, idle: _IdleConnections) -> None:
    stream = trio.SocketStream(conn)
    try:
        async with stream:
            uid = peer_uid(conn)
            if uid not in (os.getuid(), 0):
                log.warning("refused a control request from uid %d", uid)
                await _reply(stream, {"ok": False, "error": "this daemon belongs to another user"})
                return
            await _requests(stream, handler, idle)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    except Exception:  # a bug in a handler must cost this connection, never the mount
        log.exception("control connection failed")
    finally:
        idle.count -= 1


async def _requests(stream: trio.SocketStream, handler: Handler, idle: _IdleConnections) -> None:
    key = id(stream)
    while True:
        with trio.move_on_after(REQUEST_TIMEOUT) as waiting:
            idle.waiting[key] = waiting
            try:
                line = await read_line(stream)
            except RequestError as exc:
                await _reply(stream, {"ok": False, "error": str(exc)})
                return
            finally:
                idle.waiting.pop(key, None)
        if waiting.cancelled_caught or line is None:
            return  # silent too long, closed, or made room for a newer connection
        try:
            reply = await handler(parse_request(line))
        except RequestError as exc:
            reply = {"ok": False, "error": str(exc)}
        except OSError as exc:
            reply = {"ok": False, "error": str(exc)}
        except Exception as exc:
            log.exception("control request %r failed", line[:200])
            reply = {"ok": False, "error": f"the daemon could not handle the request ({type(exc).__name__}: "
                                          f"{exc}); its log has the details"}
        await _reply(stream, reply)


async def _reply(stream: trio.SocketStream, reply: dict[str, Any]) -> None:
    await stream.send_all(json.dumps(reply).encode() + b"\n")
