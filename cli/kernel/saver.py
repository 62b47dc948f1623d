"""Saving a kernel's variables into the workspace after each cell, at the price of what changed.

Variables live in ``.cowfs/vars/<session>/`` at the root of the mount, as ordinary workspace
files, so the after-cell snapshot freezes them with the files the cell wrote, and their
bytes are chunked and deduplicated with everything else in the store. Per group of
co-variables (``cowfs.cli.kernel.planner``) there is a pickle skeleton (inline in the
manifest when small) and one file per big buffer (numpy and pandas data, handed out of band
by pickle protocol 5). A save:

- looks only at the groups the cell could have changed (the namespace recorded what it
  touched); an untouched 1 GiB frame costs nothing;
- hashes a revisited buffer in blocks and rewrites only the blocks whose hash changed, in
  place: one changed value in a 1 GiB frame writes one block, which is all the store adds.

``COWFS_VARS_MODE=full`` pickles every variable whole after every cell, as cowfs did before
tracking existed: the benchmark's baseline, not a mode to use.

Any failure forgets what the saver knew of the files, so the next save rewrites them whole
rather than trusting files a failed write may have left half-changed.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import sys
import types
import threading
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import blake3

from cowfs.cli.kernel.background import BackgroundWrite
from cowfs.cli.kernel.capture import Capture, capture
from cowfs.cli.kernel.namespace import TrackedNamespace, user_names
from cowfs.cli.kernel.planner import SavedGroup, group_by_sharing, names_to_revisit
from cowfs.cli.kernel.signing import sign, user_key
from cowfs.cli.kernel.vars_format import (FORMAT, HASH_BLOCK, INLINE_BYTES, MANIFEST, VARS_ROOT, group_id,
                                          skeleton_file)

_THREADED_MIN = 16 * HASH_BLOCK  # below this one thread hashes faster than two can start


def new_session() -> str:
    return f"{os.getpid()}-{secrets.token_hex(3)}"


@dataclass
class BufferFile:
    """What a buffer file holds now: its size and the blake3 digest of each hash block."""

    size: int
    digests: list[bytes]


@dataclass
class SaveReport:
    """What the last save did: the figures the bench and the tests read."""

    revisited: list[str] = field(default_factory=list)
    hashed_bytes: int = 0
    written_bytes: int = 0


@dataclass
class _Group:
    names: tuple[str, ...]
    reaches: frozenset[int]
    opaque: bool
    entry: dict

    def saved(self) -> SavedGroup:
        return SavedGroup(frozenset(self.names), self.reaches, self.opaque)


@dataclass
class SavePlan:
    """All a save will write, decided in the kernel in about a millisecond per revisited group.
    Carrying it out (hashing buffers, writing the blocks that changed) is the slow part, and
    can happen here or in a forked child that sees the heap frozen as it is now."""

    skeletons: dict[str, bytes] = field(default_factory=dict)  # file -> new content
    buffers: list[tuple[str, memoryview]] = field(default_factory=list)  # file -> live bytes
    stale: set[str] = field(default_factory=set)  # files no group uses any more
    manifest: bytes | None = None  # None: unchanged

    @property
    def buffer_bytes(self) -> int:
        return sum(view.nbytes for _, view in self.buffers)


class NamespaceSaver:
    """Keeps one kernel's saved variables up to date, one save per cell."""

    def __init__(self, shell: Any, session: str | None = None) -> None:
        self.shell = shell
        self.session = session or new_session()
        self.report = SaveReport()
        self.background: list[BackgroundWrite] = []  # the chain of writes in flight, oldest first
        self._signing_key: bytes | None = None
        self._forget()

    def _forget(self) -> None:
        """Trust nothing known of the files: the next save looks at every name and rewrites all."""
        self._groups: dict[str, _Group] = {}
        self._ids: dict[str, int] = {}
        self._names: dict[str, dict] = {}
        self._buffers: dict[str, BufferFile] = {}
        self._manifest: dict | None = None
        self._made_dirs: set[Path] = set()

    abandon = _forget  # a plan that will never be carried out leaves the files unknown

    def _key(self) -> bytes:
        if self._signing_key is None:
            self._signing_key = user_key()
        return self._signing_key

    @property
    def relative_dir(self) -> str:
        return f"{VARS_ROOT}/{self.session}"

    def save(self, mount_root: Path) -> None:
        """Plan and write at once (the whole save on the cell's path)."""
        self.apply(self.plan(), mount_root)

    def unsaveable(self) -> dict[str, str]:
        """The variables the last save could not pickle, and why."""
        return {name: entry["error"] for name, entry in self._names.items() if "error" in entry}

    def plan(self) -> SavePlan:
        try:
            return self._plan()
        except BaseException:
            self._forget()
            raise

    def apply(self, plan: SavePlan, mount_root: Path) -> None:
        try:
            self._apply(plan, mount_root / self.relative_dir)
        except BaseException:
            self._forget()
            raise

    @property
    def in_flight(self) -> int:
        """How many background writes have not been settled yet."""
        return len(self.background)

    def apply_in_background(self, plan: SavePlan, mount_root: Path, label: str,
                            then: Callable[[str | None], None]) -> None:
        """Write ``plan`` from a forked child, after the writes already in flight; the child
        calls ``then(error or None)`` when done (it takes the companion snapshot)."""
        def work(previous: dict | None) -> dict:
            try:
                if previous is not None:
                    if "error" in previous:
                        raise SaveFailed(f"the variables before these were not written ({previous['error']})")
                    self._buffers = _decode_buffers(previous["buffers"])
                self._apply(plan, mount_root / self.relative_dir)
            except Exception as exc:
                then(f"{type(exc).__name__}: {exc}"[:300])
                return {"error": f"{type(exc).__name__}: {exc}"[:300], "companion": True}
            then(None)
            return {"buffers": {name: [held.size, [d.hex() for d in held.digests]]
                                for name, held in self._buffers.items()},
                    "report": [self.report.hashed_bytes, self.report.written_bytes]}

        after = self.background[-1] if self.background else None
        self.background.append(BackgroundWrite.start(work, label, after))

    def background_done(self) -> bool:
        """Whether every write in flight has finished (then settling costs no wait)."""
        return bool(self.background) and self.background[-1].exited()

    def settle(self) -> list[tuple[str, str, bool]]:
        """Wait for every write in flight and learn what they wrote. Returns the failures:
        (snapshot, why, whether the child recorded it in a companion snapshot)."""
        if not self.background:
            return []
        chain, self.background = self.background, []
        outcomes = [(write.label, write.outcome()) for write in chain]
        for write in chain:
            write.reap()
        failures = [(label, o["error"], bool(o.get("companion"))) for label, o in outcomes if "error" in o]
        if failures:
            self._forget()
            return failures
        last = outcomes[-1][1]
        self._buffers = _decode_buffers(last["buffers"])
        self.report.hashed_bytes, self.report.written_bytes = last["report"]
        return []

    def _plan(self) -> SavePlan:
        namespace = self.shell.user_ns
        if isinstance(namespace, TrackedNamespace):
            touched, everything = namespace.drain()
        else:
            touched, everything = set(), True
        full = os.environ.get("COWFS_VARS_MODE") == "full"
        values = user_names(namespace, getattr(self.shell, "user_ns_hidden", {}))
        modules = {name: value.__name__ for name, value in values.items() if isinstance(value, types.ModuleType)}
        variables = {name: value for name, value in values.items() if name not in modules}
        current = {name: id(value) for name, value in variables.items()}
        revisit = names_to_revisit(current, self._ids, [g.saved() for g in self._groups.values()], touched,
                                   everything or full or not self._manifest, module_reach(touched, values))
        self.report = SaveReport(sorted(revisit))

        with namespace.unrecorded() if isinstance(namespace, TrackedNamespace) else nullcontext():
            return self._capture_and_group(revisit, variables, modules, current, full)

    def _capture_and_group(self, revisit: set[str], variables: dict[str, Any], modules: dict[str, str],
                           current: dict[str, int], full: bool) -> SavePlan:
        plan = SavePlan()
        names: dict[str, dict] = {name: {"module": module} for name, module in modules.items()}
        captures: dict[str, Capture] = {}
        for name in sorted(revisit):
            try:
                captures[name] = capture((variables[name],), out_of_band=not full)
            except Exception as exc:  # open files, sockets, generators, locks...
                kind = type(variables[name]).__name__
                names[name] = {"error": f"{kind} cannot be saved ({type(exc).__name__}: {exc})"[:300]}
        kept = {gid: g for gid, g in self._groups.items() if not set(g.names) & revisit and
                all(name in variables for name in g.names)}
        components = group_by_sharing({n: c.reaches for n, c in captures.items()},
                                      [g.saved() for g in kept.values()])
        groups: dict[str, _Group] = {}
        for component in components:
            members = tuple(sorted(component))
            for gid, group in list(kept.items()):
                if set(group.names) & component:
                    del kept[gid]  # pulled into a new group: saved again with it
            together = captures[members[0]] if len(members) == 1 and members[0] in captures \
                else capture(tuple(variables[name] for name in members), out_of_band=not full)
            gid = group_id(members)
            groups[gid] = _Group(members, together.reaches, together.opaque,
                                 self._plan_group(plan, gid, members, together, variables))
        groups.update(kept)
        for gid, group in groups.items():
            for name in group.names:
                names[name] = {"group": gid}
        for name, entry in self._names.items():  # unsaveable values nobody touched stay reported
            if "error" in entry and name in variables and name not in revisit:
                names[name] = entry
        plan.stale = _files_of(self._groups) - _files_of(groups)
        self._groups, self._names = groups, names
        self._ids = {name: current[name] for name in current if name in names}
        manifest = {"format": FORMAT, "names": names, "groups": {gid: g.entry for gid, g in groups.items()}}
        if manifest != self._manifest:
            plan.manifest = json.dumps(sign(manifest, self._key()), sort_keys=True).encode()
            self._manifest = manifest
        return plan

    def _plan_group(self, plan: SavePlan, gid: str, names: tuple[str, ...], captured: Capture,
                    variables: dict[str, Any]) -> dict:
        entry: dict = {"names": list(names), "types": [type(variables[n]).__name__ for n in names]}
        if len(captured.skeleton) <= INLINE_BYTES and not captured.buffers:
            entry["inline"] = base64.b64encode(captured.skeleton).decode()
        else:
            entry["skeleton"] = skeleton_file(gid)
            entry["skeleton_hash"] = blake3.blake3(captured.skeleton).hexdigest()
            previous = self._groups.get(gid)
            if previous is None or previous.entry.get("skeleton_hash") != entry["skeleton_hash"]:
                plan.skeletons[entry["skeleton"]] = captured.skeleton
        entry["buffers"] = []
        for index, view in enumerate(captured.buffers):
            # Named by address, the same array finds its file (and its digests) again
            # whatever group it is in next time.
            address = buffer_address(view)
            name = f"{address:x}.buf" if address is not None else f"{gid}-{index}.buf"
            view = view.cast("B") if view.format != "B" or view.ndim != 1 else view
            plan.buffers.append((name, view))
            entry["buffers"].append({"file": name, "size": view.nbytes})
        return entry

    def _apply(self, plan: SavePlan, directory: Path) -> None:
        if directory not in self._made_dirs:
            inside_workspace(directory, directory.parents[len(Path(self.relative_dir).parts) - 1])
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            self._made_dirs.add(directory)
        for name, data in plan.skeletons.items():
            write_file(directory / name, data)
            self.report.written_bytes += len(data)
        for name, view in plan.buffers:
            self._write_buffer(directory, name, view)
        for name in plan.stale:
            (directory / name).unlink(missing_ok=True)
            self._buffers.pop(name, None)
        if plan.manifest is not None:
            write_file(directory / MANIFEST, plan.manifest)

    def _write_buffer(self, directory: Path, name: str, view: memoryview) -> None:
        """Write the blocks of ``view`` whose hash differs from what its file holds."""
        digests = block_digests(view)
        self.report.hashed_bytes += view.nbytes
        held = self._buffers.pop(name, None)
        flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | (0 if held else os.O_TRUNC)
        fd = os.open(directory / name, flags, 0o600)
        try:
            for start, end in changed_runs(held.digests if held else [], digests, view.nbytes):
                write_all(fd, view[start:end], start)
                self.report.written_bytes += end - start
            if held and held.size > view.nbytes:
                os.ftruncate(fd, view.nbytes)
        finally:
            os.close(fd)
        self._buffers[name] = BufferFile(view.nbytes, digests)


class SaveFailed(Exception):
    """A save could not be completed; the message says which and why."""


def _decode_buffers(raw: dict) -> dict[str, BufferFile]:
    return {name: BufferFile(size, [bytes.fromhex(d) for d in digests]) for name, (size, digests) in raw.items()}


def _files_of(groups: dict[str, _Group]) -> set[str]:
    files = {b["file"] for g in groups.values() for b in g.entry["buffers"]}
    return files | {g.entry["skeleton"] for g in groups.values() if "skeleton" in g.entry}


def block_digests(view: memoryview) -> list[bytes]:
    """blake3 of each hash block; big buffers on two threads (blake3 releases the GIL). Plain
    threads, not a pool: this also runs in a forked child, where a pool's threads are gone."""
    if view.nbytes < _THREADED_MIN:
        return [blake3.blake3(view[s:s + HASH_BLOCK]).digest(16) for s in range(0, view.nbytes, HASH_BLOCK)]
    half = (view.nbytes // HASH_BLOCK // 2) * HASH_BLOCK
    parts: dict[int, list[bytes]] = {}

    def run(lo: int, hi: int) -> None:
        parts[lo] = [blake3.blake3(view[s:min(s + HASH_BLOCK, hi)]).digest(16) for s in range(lo, hi, HASH_BLOCK)]

    helper = threading.Thread(target=run, args=(0, half), name="cowfs-hash", daemon=True)
    helper.start()
    run(half, view.nbytes)
    helper.join()
    return parts[0] + parts[half]


def module_reach(touched: set[str], values: dict[str, Any]) -> frozenset[int]:
    """Ids of the attributes of the modules a cell used (directly, or through a function or
    class imported from them): code there can change those objects without any name of the
    namespace being read, so a group that reaches one must be looked at again."""
    found: set[int] = set()
    for name in touched:
        value = values.get(name)
        if isinstance(value, types.ModuleType):
            module = value
        elif callable(value) and getattr(value, "__module__", "__main__") not in ("__main__", None):
            module = sys.modules.get(value.__module__)
        else:
            continue
        if module is not None and module.__name__ != "__main__":
            found.update(id(attr) for attr in vars(module).values())
    return frozenset(found)


def changed_runs(old: list[bytes], new: list[bytes], size: int) -> list[tuple[int, int]]:
    """Byte ranges of the hash blocks that differ, adjacent ones merged into one write."""
    runs: list[tuple[int, int]] = []
    for i, digest in enumerate(new):
        if i < len(old) and old[i] == digest:
            continue
        start, end = i * HASH_BLOCK, min((i + 1) * HASH_BLOCK, size)
        if runs and runs[-1][1] == start:
            runs[-1] = (runs[-1][0], end)
        else:
            runs.append((start, end))
    return runs


def buffer_address(view: memoryview) -> int | None:
    """Where the buffer's memory starts (numpy exports every buffer pickle hands out here)."""
    try:
        import numpy
    except ImportError:
        return None
    try:
        return int(numpy.frombuffer(view, dtype=numpy.uint8).ctypes.data)
    except (TypeError, ValueError):
        return None


def write_all(fd: int, data: memoryview, offset: int) -> None:
    while data:
        done = os.pwrite(fd, data, offset)
        data, offset = data[done:], offset + done


def inside_workspace(directory: Path, root: Path) -> None:
    """A ``.cowfs`` or session directory planted as a symlink must not send the saver's writes
    (and truncations) outside the workspace."""
    real_root = os.path.realpath(root)
    if os.path.commonpath([os.path.realpath(directory), real_root]) != real_root:
        raise SaveFailed(f"{directory} leads outside the workspace (a symlink?); not writing variables there")


def write_file(path: Path, data: bytes) -> None:
    """Files are never opened through a symlink: one planted in place of a saved file would
    otherwise have its target truncated."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    try:
        write_all(fd, memoryview(data), 0)
    finally:
        os.close(fd)
