"""Starting a daemon in the background and waiting until its mount is ready."""

from __future__ import annotations

import os
import select
import subprocess
import sys
import time
from pathlib import Path

from cowfs.cli.client import DaemonError, foreign_mount_message, foreign_owner, request
from cowfs.daemon.addresses import mounts
from cowfs.fs.store import open_private

READY_TIMEOUT = 60.0


def start_daemon(store: Path, branch: str, mountpoint: Path, *, allow_other: bool = False,
                 xattrs: bool = False, foreground: bool = False, debug: bool = False,
                 remote_cache: int | None = None) -> None:
    # -P: the caller's working directory (a clone of cowfs, a folder named cowfs/...) must not
    # shadow the installed package; and the daemon lives in / so it holds no directory busy.
    command = [sys.executable, "-P", "-m", "cowfs.daemon", "--store", str(store.absolute()), "--branch", branch]
    if allow_other:
        command.append("--allow-other")
    if xattrs:
        command.append("--xattrs")
    if debug:
        command.append("--debug")
    if remote_cache is not None:
        command += ["--remote-cache-size", str(remote_cache)]
    if foreground:
        os.chdir("/")
        os.execv(sys.executable, command + ["--foreground", str(mountpoint.absolute())])
    read_end, write_end = os.pipe()
    stderr_log = open(open_private(store / "logs" / "daemon-stderr.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND),
                      "ab")
    try:
        subprocess.Popen(command + ["--ready-fd", str(write_end), str(mountpoint.absolute())], pass_fds=[write_end],
                         cwd="/", start_new_session=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=stderr_log, close_fds=True)
    finally:
        os.close(write_end)
        stderr_log.close()
    message = _read_ready(read_end)
    if message != "ready":
        raise DaemonError(message.removeprefix("error: ") if message else
                          f"the daemon exited before the mount was ready; see {store / 'logs'}")


def _read_ready(fd: int) -> str:
    deadline = time.monotonic() + READY_TIMEOUT
    data = b""
    try:
        while b"\n" not in data:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
                return "error: the daemon did not report ready in time"
            chunk = os.read(fd, 4096)
            if not chunk:
                break
            data += chunk
    finally:
        os.close(fd)
    return data.decode(errors="replace").strip()


def is_mounted(mountpoint: Path) -> bool:
    return any(entry.mountpoint == str(mountpoint) for entry in mounts())


FUSECTL = Path("/sys/fs/fuse/connections")


def abort_connection(mountpoint: Path) -> None:
    """Abort the FUSE connection of a mount whose daemon is dead or wedged.

    A daemon killed while one of its own threads waited on its mount lingers as a zombie that
    holds the connection open; aborting fails every pending request, so it can finally exit."""
    entry = next((e for e in mounts() if e.mountpoint == str(mountpoint)), None)
    if entry is None or not entry.fstype.startswith("fuse"):
        return
    if not (FUSECTL / "abort").parent.is_dir() or not any(FUSECTL.iterdir()):
        subprocess.run(["mount", "-t", "fusectl", "fusectl", str(FUSECTL)], check=False,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        (FUSECTL / entry.device.split(":")[1] / "abort").write_text("1")
    except OSError:
        pass  # not root, or no fusectl: the lazy unmount below still detaches it


def detach_stale(mountpoint: Path) -> None:
    """A mount whose daemon died answers every call with ENOTCONN; a lazy unmount clears it."""
    refuse_foreign(mountpoint)
    abort_connection(mountpoint)
    subprocess.run(["fusermount3", "-u", "-z", str(mountpoint)], check=False,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if is_mounted(mountpoint):
        subprocess.run(["umount", "-l", str(mountpoint)], check=False,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def refuse_foreign(mountpoint: Path) -> None:
    owner = foreign_owner(mountpoint)
    if owner is not None:
        raise DaemonError(f"{foreign_mount_message(mountpoint, owner)}; it is not stale. "
                          f"Ask its owner to run `cowfs umount {mountpoint}`")


def daemon_alive(mountpoint: Path) -> bool:
    try:
        request(mountpoint, {"op": "status"}, timeout=5)
        return True
    except DaemonError:
        return False


def stop_daemon(mountpoint: Path, timeout: float = 120.0, linger: float = 3.0) -> tuple[str, int | None]:
    """Ask the daemon to flush and unmount. Returns ("stopped", pid); ("detached", pid) when the
    mount was busy, so it was detached and the daemon serves its last users before exiting;
    or ("stale", None) when the daemon had died and the stale mount was cleared."""
    refuse_foreign(mountpoint)
    try:
        pid = request(mountpoint, {"op": "stop"})["pid"]
    except DaemonError:
        detach_stale(mountpoint)
        return "stale", None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not is_mounted(mountpoint):
            gone_by = time.monotonic() + linger
            while time.monotonic() < gone_by:
                if not _process_alive(pid):
                    return "stopped", pid
                time.sleep(0.02)
            return "detached", pid
        time.sleep(0.02)
    raise DaemonError(f"the daemon (pid {pid}) did not stop within {timeout:.0f} s; see the store's logs")


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (our own unreaped child) has exited for every purpose here.
    try:
        with open(f"/proc/{pid}/stat") as status:
            return status.read().split(") ", 1)[1][0] != "Z"
    except (OSError, IndexError):
        return False
