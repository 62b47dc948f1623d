"""Talking to a mount's daemon over its control socket (blocking: the CLI has no event loop)."""

from __future__ import annotations

import ctypes
import json
import os
import socket
from pathlib import Path

from cowfs.daemon.addresses import (AddressError, MountEntry, cowfs_mount_of, cowfs_mounts, find_control_socket,
                                    mounts)
from cowfs.fs.store import Store, default_store_path


class DaemonError(Exception):
    """The daemon could not be reached or refused the request; the message says what to do."""


def foreign_owner(mountpoint: str | Path) -> int | None:
    """The uid serving ``mountpoint`` when it is not ours: its socket is out of our reach, so
    failing to reach it says nothing about whether its daemon lives, and nothing of ours may
    abort it (root included: that would fail the owner's requests and lose unflushed data)."""
    entry = next((e for e in mounts() if e.mountpoint == str(mountpoint)), None)
    if entry is not None and entry.owner is not None and entry.owner != os.getuid():
        return entry.owner
    return None


def foreign_mount_message(mountpoint: str | Path, owner: int) -> str:
    return f"{mountpoint} is a cowfs mount of another user (uid {owner}); only its owner can use its daemon"


def request(mountpoint: str | Path, payload: dict, timeout: float = 120.0) -> dict:
    check_own_mount(mountpoint)
    return _send(mountpoint, payload, timeout)


def check_own_mount(mountpoint: str | Path) -> None:
    """Another user's daemon is not asked anything (its socket would refuse us anyway)."""
    owner = foreign_owner(mountpoint)
    if owner is not None:
        raise DaemonError(foreign_mount_message(mountpoint, owner))


def _send(mountpoint: str | Path, payload: dict, timeout: float, resolved: bool = False) -> dict:
    try:
        path = find_control_socket(mountpoint, resolved)
    except AddressError as exc:
        raise DaemonError(str(exc)) from None
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


_libc = ctypes.CDLL(None, use_errno=True)


def sync_mount(mountpoint: str | Path) -> None:
    """syncfs(2): make the kernel hand every page written so far to the daemon.

    With the writeback cache a returned write() may still sit in the kernel; a snapshot must
    include it (invariant 2), and only a process other than the daemon may ask for this."""
    fd = os.open(mountpoint, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if _libc.syncfs(fd) != 0:
            code = ctypes.get_errno()
            raise DaemonError(f"cannot sync {mountpoint}: {os.strerror(code)}")
    finally:
        os.close(fd)


def snapshot(mountpoint: str | Path, label: str = "", meta: dict | None = None, wait: bool = False,
             timeout: float = 120.0, lazy: bool = False) -> dict:
    """Take a snapshot of a mount: everything written before this call is in it.

    Without ``wait`` the daemon answers once the snapshot is listed, whole, in the store; with
    ``lazy`` at once, before that: the call never waits for the disk, and the snapshot is
    listed when its data is committed, or when a reader asks (``list_taken_snapshots``).
    Per-cell snapshots are lazy."""
    check_own_mount(mountpoint)
    sync_mount(mountpoint)
    return _send(mountpoint, {"op": "snapshot", "label": label, "meta": meta or {}, "wait": wait, "lazy": lazy},
                 timeout=timeout)["snapshot"]


def list_taken_snapshots(store: Path) -> None:
    """Have our daemons of ``store`` list the snapshots they have taken: a cell's snapshots are
    listed only once their data is committed, a moment after the cell. A command that reads
    the store asks first, so it sees every snapshot taken before it started. Mounts are named
    as the mount table gives them, so none is looked at: a hung one costs the socket's timeout."""
    for entry in cowfs_mounts():
        if entry.owner in (None, os.getuid()):
            try:
                _send(entry.mountpoint, {"op": "list", "store": str(store)}, timeout=10, resolved=True)
            except DaemonError:
                continue  # a stale mount or a stopped daemon: it has nothing in memory


def open_store(path: Path, readonly: bool = False) -> Store:
    """The store as a command should read it: after our daemons listed what they have taken."""
    list_taken_snapshots(path)
    return Store.open(path, readonly=readonly)


def resolve_store_path(explicit: str | None) -> Path:
    """The store to use: the one named, else that of the mount the working directory is in,
    else the default store."""
    if explicit:
        return Path(explicit).expanduser().absolute()
    try:
        return Path(request(mount_for(os.getcwd()).mountpoint, {"op": "status"}, timeout=5)["store"])
    except DaemonError:
        return default_store_path()


def mount_for(path: str | Path) -> MountEntry:
    """The cowfs mount holding ``path`` (default: the working directory)."""
    try:
        return cowfs_mount_of(os.path.realpath(path))
    except AddressError as exc:
        raise DaemonError(str(exc)) from None
