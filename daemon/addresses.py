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


def runtime_candidates() -> list[Path]:
    """Where this user's control sockets may live, best first: the session's runtime directory,
    then a per-user name in the shared /tmp, then a place under the user's own home that no
    one else can have made first."""
    uid = os.getuid()
    found = []
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg and os.path.isabs(xdg):
        found.append(Path(xdg) / "cowfs")
    if Path(f"/run/user/{uid}").is_dir():
        found.append(Path(f"/run/user/{uid}/cowfs"))
    found.append(Path(f"/tmp/cowfs-{uid}"))
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    found.append(Path(cache) / "cowfs" / "run")
    return list(dict.fromkeys(found))


def _private(path: Path, create: bool) -> str | None:
    """None when ``path`` is a directory only this user can enter (made if ``create``), else why not."""
    uid = os.getuid()
    try:
        if create:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            path.mkdir(mode=0o700, exist_ok=True)
        info = path.lstat()
    except FileNotFoundError:
        return "it does not exist"
    except OSError as exc:
        return f"it cannot be made ({exc.strerror})"
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != uid or stat.S_IMODE(info.st_mode) & 0o077:
        return f"it is not a private directory of uid {uid} (someone else may have made it first)"
    return None


def runtime_dir() -> Path:
    """The first candidate that is, or can be made, a directory only this user can enter.
    A name another user took first (``/tmp/cowfs-UID`` made by them, say) is passed over."""
    refused = []
    for path in runtime_candidates():
        why = _private(path, create=True)
        if why is None:
            return path
        refused.append(f"{path}: {why}")
    raise AddressError("no private runtime directory for the control socket: " + "; ".join(refused)
                       + "; remove the ones you own, or set XDG_RUNTIME_DIR to a directory of yours")


def control_socket_path(mountpoint: str | Path, resolved: bool = False) -> Path:
    """Where the daemon of ``mountpoint`` listens (for the daemon: in the first usable place)."""
    return runtime_dir() / _socket_name(mountpoint, resolved)


def find_control_socket(mountpoint: str | Path, resolved: bool = False) -> Path:
    """Where the daemon of ``mountpoint`` listens (for a client): a daemon started while the
    first choice was unusable listens further down the list, so look in every private one.

    ``resolved``: the path is already canonical (as the mount table gives it), so it is not
    resolved again; resolving looks at the mount itself, which waits while its daemon hangs."""
    name = _socket_name(mountpoint, resolved)
    for path in runtime_candidates():
        if _private(path, create=False) is None and (path / name).exists():
            return path / name
    return control_socket_path(mountpoint, resolved)


def _socket_name(mountpoint: str | Path, resolved: bool = False) -> str:
    canonical = os.fspath(mountpoint) if resolved else os.path.realpath(mountpoint)
    return blake3.blake3(os.fsencode(canonical)).hexdigest()[:24] + ".sock"


@dataclass(frozen=True)
class MountEntry:
    mountpoint: str
    device: str  # "major:minor", which names the mount's bdi in /sys/class/bdi
    fstype: str
    owner: int | None = None  # a FUSE mount's user_id: whose daemon serves it


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
            rest = after.split()
            options = dict(o.partition("=")[::2] for o in rest[2].split(",")) if len(rest) > 2 else {}
            owner = int(options["user_id"]) if options.get("user_id", "").isdigit() else None
            entries.append(MountEntry(_unescape(fields[4]), fields[2], rest[0], owner))
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
