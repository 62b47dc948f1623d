"""Where a mount's daemon listens, and which cowfs mount holds a path.

The control socket's path is derived from the mount point alone, so any client that knows a
path inside a mount (the CLI, the kernel extension) finds its daemon without a registry.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

import blake3

FSTYPE = "fuse.cowfs"


class AddressError(Exception):
    """The runtime directory is unsafe, or a path is in no cowfs mount."""


def runtime_dir() -> Path:
    """A directory only this user can enter: /run/user/UID when it exists, else /tmp/cowfs-UID."""
    uid = os.getuid()
    base = Path(f"/run/user/{uid}")
    path = base / "cowfs" if base.is_dir() else Path(f"/tmp/cowfs-{uid}")
    try:
        path.mkdir(mode=0o700, exist_ok=True)
    except OSError as exc:
        raise AddressError(f"cannot create the runtime directory {path}: {exc.strerror}") from exc
    info = path.lstat()
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != uid or stat.S_IMODE(info.st_mode) & 0o077:
        raise AddressError(f"{path} is not a private directory owned by uid {uid}; remove it and retry")
    return path


def control_socket_path(mountpoint: str | Path) -> Path:
    key = blake3.blake3(os.fsencode(os.path.realpath(mountpoint))).hexdigest()[:24]
    return runtime_dir() / f"{key}.sock"


@dataclass(frozen=True)
class MountEntry:
    mountpoint: str
    device: str  # "major:minor", which names the mount's bdi in /sys/class/bdi
    fstype: str


def _unescape(field: str) -> str:
    # /proc/self/mountinfo escapes space, tab, newline and backslash as octal.
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and len(field[i + 1:i + 4]) == 3 and field[i + 1:i + 4].isdigit():
            out.append(chr(int(field[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def mounts() -> list[MountEntry]:
    entries = []
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as table:
        for line in table:
            before, _, after = line.partition(" - ")
            fields = before.split()
            entries.append(MountEntry(_unescape(fields[4]), fields[2], after.split()[0]))
    return entries


def cowfs_mounts() -> list[MountEntry]:
    return [entry for entry in mounts() if entry.fstype == FSTYPE]


def mount_of(path: str | Path) -> MountEntry | None:
    """The innermost mount containing ``path`` (resolved without touching the mount itself)."""
    target = os.path.abspath(path)
    best: MountEntry | None = None
    for entry in mounts():
        point = entry.mountpoint
        if target == point or target.startswith(point.rstrip("/") + "/"):
            if best is None or len(point) >= len(best.mountpoint):
                best = entry
    return best


def cowfs_mount_of(path: str | Path) -> MountEntry:
    entry = mount_of(path)
    if entry is None or entry.fstype != FSTYPE:
        raise AddressError(f"{path} is not inside a cowfs mount; cd into one, or name one "
                           "(`cowfs status` lists the mounts)")
    return entry
