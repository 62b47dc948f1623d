"""Bringing saved variables back from a snapshot, all of them or only some.

Reads go straight to the store (the snapshot's tree), not through a mount, so any snapshot
can be restored from anywhere, and every chunk is checked against its hash on the way.
"""

from __future__ import annotations

import base64
import fcntl
import importlib
import importlib.util
import json
import os
import sys
import time
from typing import Any, Callable

import cloudpickle

from cowfs.cli.kernel.capture import load
from cowfs.cli.kernel.signing import UntrustedVariables, check_skeleton, user_key, verify
from cowfs.cli.kernel.vars_format import MANIFEST
from cowfs.fs.history import is_durable, variables_record
from cowfs.fs.records import SnapshotRecord
from cowfs.fs.store import Store
from cowfs.fs.tree import Tree

READ_PIECE = 8 << 20
DURABLE_WAIT = 120.0  # a flush of a few GiB of changed buffers fits in this on a slow disk
KERNEL_GONE_GRACE = 60.0  # a child outlives its kernel by the time it takes to finish writing


class RestoreError(Exception):
    """The snapshot holds no saved variables, or not the ones asked for."""


class _SavedFiles:
    """The files of one session's variables directory at one snapshot."""

    def __init__(self, store: Store, snapshot: SnapshotRecord, session_dir: str) -> None:
        self.tree = Tree.at_snapshot(store, snapshot)
        self.session_dir = session_dir

    def read(self, relative: str, size: int | None = None) -> bytearray | None:
        """The whole file, in a writable buffer (arrays loaded over it stay writable)."""
        found = self.tree.resolve(f"{self.session_dir}/{relative}".encode())
        if found is None:
            return None
        ino, attrs = found
        if size is not None and attrs.size != size:
            raise RestoreError(f"{relative} holds {attrs.size} bytes, not the {size} its manifest names")
        total = attrs.size
        out = bytearray(total)
        view = memoryview(out)
        for start in range(0, total, READ_PIECE):
            piece = self.tree.read(ino, start, min(READ_PIECE, total - start))
            view[start:start + len(piece)] = piece
        return out


def load_namespace(store: Store, snapshot: SnapshotRecord, wanted: list[str] | None = None,
                   trust: bool = False) -> tuple[dict[str, Any], list[str]]:
    """The variables saved in ``snapshot`` (those in ``wanted`` and the names they share objects
    with, or all), and one line for each that could not come back."""
    session_dir = snapshot.meta.get("vars")
    if not session_dir:
        raise RestoreError(f"snapshot {snapshot.name} was not taken by a kernel that saved its variables")
    source = variables_source(store, snapshot)
    return load_saved(_SavedFiles(store, source, source.meta.get("vars", session_dir)).read, wanted, snapshot.name,
                      trust)


def variables_source(store: Store, snapshot: SnapshotRecord, timeout: float = DURABLE_WAIT) -> SnapshotRecord:
    """The snapshot to read ``snapshot``'s variables from, once they are on disk.

    A snapshot is taken at once and written in the background, and big variables may be
    written after it by the kernel's child: a restore right after a cell waits for both."""
    deadline = time.monotonic() + timeout
    kernel_gone_since: float | None = None
    while True:
        by_name = {r.name: r for r in store.snapshots()}
        source = variables_record(by_name.get(snapshot.name, snapshot), by_name)
        if source is not None:
            if source.meta.get("vars_saved") is False:
                raise RestoreError(f"the variables of {snapshot.name} could not be saved "
                                   f"({source.meta.get('vars_error')}); restore an earlier snapshot")
            if is_durable(store, source):
                return source
            if not branch_is_served(store, source.branch):
                raise RestoreError(f"{snapshot.name} was never written to disk: the daemon that took it "
                                   "stopped first; restore an earlier snapshot")
        elif not kernel_alive(snapshot.meta.get("vars", "")):
            kernel_gone_since = kernel_gone_since or time.monotonic()
            if time.monotonic() - kernel_gone_since > KERNEL_GONE_GRACE:
                raise RestoreError(f"the variables of {snapshot.name} were still being written when their "
                                   "kernel stopped; restore an earlier snapshot")
        if time.monotonic() > deadline:
            raise RestoreError(f"the variables of {snapshot.name} are still being written after {timeout:.0f} s; "
                               "check `cowfs status`, then try again")
        time.sleep(0.05)


def kernel_alive(session_dir: str) -> bool:
    """Sessions are named ``<kernel pid>-<random>``: is that kernel still running here?"""
    pid = os.path.basename(session_dir).split("-", 1)[0]
    if not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def branch_is_served(store: Store, branch_id: int) -> bool:
    """Whether a daemon holds the branch's lock (it is released when the daemon dies)."""
    try:
        fd = os.open(store.path / "locks" / f"branch-{branch_id}", os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


Reader = Callable[..., "bytearray | None"]  # (file name relative to the session dir, size=None)


def load_saved(read: Reader, wanted: list[str] | None, where: str,
               trust: bool = False) -> tuple[dict[str, Any], list[str]]:
    """The loading itself, over any way of reading the session directory's files. Nothing is
    unpickled unless this user's key signed it, or ``trust`` says the user vouches for it."""
    raw = read(MANIFEST)
    if raw is None:
        if wanted:
            raise RestoreError(f"no variables were saved at {where}")
        return {}, []
    try:
        manifest = json.loads(raw)
        if not trust:
            verify(manifest, user_key(create=False))
    except (ValueError, UntrustedVariables) as exc:
        reason = "their manifest is not JSON" if isinstance(exc, ValueError) else str(exc)
        raise RestoreError(f"not restoring the variables of {where}: {reason}; restoring runs code, so "
                           "add --trust only if you trust where they came from") from None
    if manifest.get("format") != 2:
        return _load_format_1(read, manifest, wanted)
    names: dict[str, dict] = manifest["names"]
    missing = [name for name in wanted or [] if name not in names]
    if missing:
        raise RestoreError(f"{', '.join(missing)} {'was' if len(missing) == 1 else 'were'} not saved at "
                           f"{where}; saved there: {', '.join(sorted(names)) or '(nothing)'}")
    groups = manifest["groups"]
    return _load_each(names, wanted or sorted(names), lambda entry: dict(
        zip(groups[entry["group"]]["names"], _load_group(read, groups[entry["group"]], trust))))


def _load_each(entries: dict[str, dict], chosen: list[str],
               load: Callable[[dict], dict[str, Any]]) -> tuple[dict[str, Any], list[str]]:
    """What both manifest formats share: modules by name, unsaved values reported, and each
    failure a line of its own rather than the end of the restore."""
    values: dict[str, Any] = {}
    problems: list[str] = []
    for name in chosen:
        if name in values:
            continue  # came back with its group
        entry = entries[name]
        try:
            if "module" in entry:
                values[name] = import_module(entry["module"])
            elif "error" in entry:
                problems.append(f"{name}: not saved: {entry['error']}")
            else:
                values.update(load(entry))
        except Exception as exc:
            problems.append(f"{name}: could not be restored ({type(exc).__name__}: {exc})")
    return values, problems


def _load_group(read: Reader, group: dict, trust: bool) -> tuple[Any, ...]:
    if "inline" in group:
        skeleton = base64.b64decode(group["inline"])
    else:
        skeleton = read(group["skeleton"])
        if skeleton is None:
            raise RestoreError("its saved file is missing")
        if not trust:
            check_skeleton(bytes(skeleton), group.get("skeleton_hash"))
    buffers = []
    for buffer in group["buffers"]:
        data = read(buffer["file"], buffer["size"])
        if data is None:
            raise RestoreError(f"its buffer file {buffer['file']} is missing")
        buffers.append(data)
    return load(bytes(skeleton), buffers)


def import_module(name: str) -> Any:
    """A saved module is imported by name, but never from the working directory (the
    workspace), which IPython puts first on ``sys.path``: a planted ``numpy.py`` there must
    not shadow numpy and run on restore. Packages installed in a virtualenv that happens to
    live in the workspace are found through their own ``sys.path`` entry and are fine."""
    if name in sys.modules:
        return sys.modules[name]
    top = name.partition(".")[0]
    spec = importlib.util.find_spec(top)
    if spec is None:
        raise RestoreError(f"no module named {top!r} here")
    if spec.origin and spec.origin not in ("built-in", "frozen"):
        holders = [os.path.dirname(spec.origin)]
        if spec.submodule_search_locations:  # a package: its directory sits in the holder
            holders = [os.path.dirname(os.path.dirname(spec.origin))]
    else:
        holders = [os.path.dirname(location) for location in spec.submodule_search_locations or []]
    here = os.path.realpath(os.getcwd())
    if any(os.path.realpath(holder) == here for holder in holders):
        raise RestoreError(f"not imported: {top} would come from the working directory ({here}), a file "
                           f"anyone who can write there could have planted; `import {name}` yourself if you trust it")
    return importlib.import_module(name)


def _load_format_1(read: Reader, manifest: dict, wanted: list[str] | None) -> tuple[dict[str, Any], list[str]]:
    """Variables saved before groups and out-of-band buffers existed: one pickle per name."""
    def load(entry: dict) -> dict[str, Any]:
        if "inline" in entry:
            return {entry["name"]: cloudpickle.loads(base64.b64decode(entry["inline"]))}
        data = read(entry["file"])
        if data is None:
            raise RestoreError("its saved file is missing")
        return {entry["name"]: cloudpickle.loads(data)}

    entries = {name: {**entry, "name": name} for name, entry in manifest.items()}
    return _load_each(entries, sorted(n for n in entries if not wanted or n in wanted), load)
