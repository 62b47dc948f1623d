"""The control socket: JSON lines between the CLI (or the kernel extension) and a daemon.

Requests: ``{"op": "snapshot", "label": str, "meta": {...}, "wait": bool}``, ``{"op": "status"}``,
``{"op": "flush"}``, ``{"op": "rotate"}`` (finish the current pack so gc may rewrite it),
``{"op": "stop"}``. Every reply is one line ``{"ok": true, ...}`` or
``{"ok": false, "error": "what happened and what to do"}``. The socket is 0600 in a 0700
directory, and a peer of another uid is refused before its request is read.
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
    try:
        async with trio.open_nursery() as nursery:
            task_status.started()
            while True:
                conn, _ = await listener.accept()
                nursery.start_soon(_serve_connection, conn, handler)
    finally:
        listener.close()
        try:
            path.unlink()
        except FileNotFoundError:
            pass


async def _serve_connection(conn: trio.socket.SocketType, handler: Handler) -> None:
    stream = trio.SocketStream(conn)
    async with stream:
        uid = peer_uid(conn)
        if uid not in (os.getuid(), 0):
            log.warning("refused a control request from uid %d", uid)
            await _reply(stream, {"ok": False, "error": "this daemon belongs to another user"})
            return
        while True:
            try:
                line = await read_line(stream)
                if line is None:
                    return
                reply = await handler(parse_request(line))
            except RequestError as exc:
                reply = {"ok": False, "error": str(exc)}
            except trio.BrokenResourceError:
                return
            except OSError as exc:
                reply = {"ok": False, "error": str(exc)}
            try:
                await _reply(stream, reply)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return


async def _reply(stream: trio.SocketStream, reply: dict[str, Any]) -> None:
    await stream.send_all(json.dumps(reply).encode() + b"\n")
