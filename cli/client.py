"""Talking to a mount's daemon over its control socket (blocking: the CLI has no event loop)."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

from cowfs.daemon.addresses import AddressError, MountEntry, control_socket_path, cowfs_mount_of


class DaemonError(Exception):
    """The daemon could not be reached or refused the request; the message says what to do."""


def request(mountpoint: str | Path, payload: dict, timeout: float = 120.0) -> dict:
    path = control_socket_path(mountpoint)
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(str(path))
            sock.sendall(json.dumps(payload).encode() + b"\n")
            buffer = b""
            while b"\n" not in buffer:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                buffer += chunk
    except (FileNotFoundError, ConnectionRefusedError) as exc:
        raise DaemonError(f"no cowfs daemon is running for {mountpoint} ({exc.strerror}); "
                          f"run `cowfs mount {mountpoint}` to start it again") from None
    except socket.timeout:
        raise DaemonError(f"the cowfs daemon for {mountpoint} did not answer in {timeout:.0f} s") from None
    except OSError as exc:
        raise DaemonError(f"cannot talk to the cowfs daemon for {mountpoint}: {exc}") from None
    if not buffer:
        raise DaemonError(f"the cowfs daemon for {mountpoint} closed the connection without answering")
    reply = json.loads(buffer.split(b"\n", 1)[0])
    if not reply.get("ok"):
        raise DaemonError(reply.get("error") or "the daemon refused the request")
    return reply


def mount_for(path: str | Path) -> MountEntry:
    """The cowfs mount holding ``path`` (default: the working directory)."""
    try:
        return cowfs_mount_of(os.path.realpath(path))
    except AddressError as exc:
        raise DaemonError(str(exc)) from None
