"""The IPython extension: a snapshot before and after every cell, invisible to the user.

After each cell the variables the cell could have changed are saved into the workspace
(``cowfs.cli.kernel.saver``) just before the after-cell snapshot, so a snapshot holds the
files *and* the variables of that moment; ``%cowfs restore <snap> [names]`` brings them back
in a fresh kernel. Loading the extension makes the user namespace record what each cell
touches (``cowfs.cli.kernel.namespace``): that is what keeps an untouched 1 GiB frame free.

The hooks never raise into the user's cell and add nothing to its output: when the daemon
is gone or the kernel works outside any mount, they warn once on stderr, in one line, and
resume quietly when the daemon comes back.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import blake3

from cowfs.cli.client import DaemonError, mount_for, open_store, resolve_store_path, snapshot
from cowfs.cli.kernel.namespace import install as track_namespace
from cowfs.cli.kernel.restore import RestoreError, load_namespace
from cowfs.cli.kernel.saver import NamespaceSaver
from cowfs.cli.kernel.vars_format import RESTORE_ON_START
from cowfs.daemon.addresses import MountEntry
from cowfs.fs.errors import StoreError

SNAPSHOT_TIMEOUT = 30.0
BACKGROUND_MIN_BYTES = 32 << 20  # below this, hashing on the cell's path costs under ~5 ms
MAX_IN_FLIGHT = 2  # background writes at once: each pins the pages the kernel changes meanwhile


def notebook_path(shell: Any) -> str | None:
    """Where the notebook lives, when the front end says (Jupyter server, VS Code)."""
    for source in (os.environ.get("JPY_SESSION_NAME"), shell.user_ns.get("__vsc_ipynb_file__")):
        if source:
            return str(source)
    return None


def first_line(source: str) -> str:
    for line in source.splitlines():
        if line.strip():
            return line.strip()[:120]
    return ""


def _skipped(info: Any) -> bool:
    """Silent executions (front-end introspection, %%capture internals) are not the user's cells."""
    return info is not None and (getattr(info, "silent", False) or not getattr(info, "store_history", True))


@dataclass
class CellSnapshots:
    shell: Any
    warned: bool = False
    pending: dict | None = None  # what pre_run_cell learnt, for post_run_cell
    timings: list[float] = field(default_factory=list)  # seconds spent in each hook call
    saver: NamespaceSaver | None = None
    vars_warned: bool = False
    last_after: str | None = None  # the last after-cell snapshot: a before-cell one's variables
    reported_unsaveable: set[str] = field(default_factory=set)
    _mount_cache: tuple[str, MountEntry] | None = None

    def __post_init__(self) -> None:
        self.saver = NamespaceSaver(self.shell)

    def register(self) -> None:
        self.shell.events.register("pre_run_cell", self.pre_run_cell)
        self.shell.events.register("post_run_cell", self.post_run_cell)

    def unregister(self) -> None:
        for event, callback in (("pre_run_cell", self.pre_run_cell), ("post_run_cell", self.post_run_cell)):
            try:
                self.shell.events.unregister(event, callback)
            except ValueError:
                pass

    def _cell_meta(self, info: Any) -> dict:
        source = getattr(info, "raw_cell", "") or ""
        return {
            "kind": "cell",
            "notebook": notebook_path(self.shell),
            "cell_id": getattr(info, "cell_id", None),
            "source_hash": blake3.blake3(source.encode()).hexdigest()[:16],
            "first_line": first_line(source),
            "vars": self.saver.relative_dir,
        }

    def pre_run_cell(self, info: Any) -> None:
        started = time.perf_counter()
        try:
            if _skipped(info):
                self.pending = None
                return
            meta = self._cell_meta(info)
            self.pending = meta
            self._snapshot(f"before: {meta['first_line']}", {**meta, "phase": "before"}, save_vars=False)
        except Exception as exc:  # never into the user's cell
            self._warn(exc)
        finally:
            self.timings.append(time.perf_counter() - started)

    def post_run_cell(self, result: Any) -> None:
        started = time.perf_counter()
        try:
            info = getattr(result, "info", None)
            if _skipped(info):
                return
            # post without pre happens (e.g. whitespace-only cells): describe the cell from here.
            meta = self.pending or (self._cell_meta(info) if info is not None else {"kind": "cell"})
            self.pending = None
            error = getattr(result, "error_in_exec", None) or getattr(result, "error_before_exec", None)
            outcome = "ok" if error is None else f"error: {type(error).__name__}"
            count = getattr(result, "execution_count", None)
            meta = {**meta, "phase": "after", "execution_count": count, "success": error is None,
                    "error": None if error is None else f"{type(error).__name__}: {error}"[:500]}
            self._snapshot(f"after [{count}] {outcome}: {meta.get('first_line', '')}", meta, save_vars=True)
        except Exception as exc:
            self._warn(exc)
        finally:
            self.timings.append(time.perf_counter() - started)

    def _mount(self) -> MountEntry:
        """The mount of the working directory, remembered while the directory stays the same."""
        cwd = os.getcwd()
        if self._mount_cache is None or self._mount_cache[0] != cwd:
            self._mount_cache = (cwd, mount_for(cwd))
        return self._mount_cache[1]

    def _snapshot(self, label: str, meta: dict, save_vars: bool) -> None:
        try:
            root = Path(self._mount().mountpoint)
            if save_vars:
                self._snapshot_with_variables(root, label[:200], meta)
            else:
                cell_snapshot(root, label[:200], {**meta, "vars_from": self.last_after})
        except (DaemonError, OSError) as exc:
            self._mount_cache = None  # perhaps unmounted and mounted again: look afresh next time
            self._warn(exc)
            return
        self.warned = False  # working again: warn anew if it breaks again

    def _snapshot_with_variables(self, root: Path, label: str, meta: dict) -> None:
        """The after-cell snapshot, holding the files and the variables of this instant.

        Small changes are written before the snapshot is taken. Big buffers to hash are
        written by a forked child after it: the snapshot is marked ``vars_pending`` and the
        child takes a companion snapshot (``kind: vars``) once the variables are written,
        which is where a restore reads them. Either way a failure costs the variables of
        this cell (said once, in one line), never the cell or its files' snapshot."""
        session_dir = self.saver.relative_dir
        meta = {**meta, "vars": session_dir}
        if self.saver.in_flight >= MAX_IN_FLIGHT or self.saver.background_done():
            self._settle(root, session_dir)
        try:
            plan = self.saver.plan()
        except Exception as exc:
            plan, meta = None, {**meta, "vars_saved": False, "vars_error": f"{type(exc).__name__}: {exc}"[:300]}
        if plan is not None and (self.saver.in_flight or background_allowed(plan)):
            try:
                record = cell_snapshot(root, label, {**meta, "vars_pending": True})
            except BaseException:
                self._settle(root, session_dir)
                self.saver.abandon()
                raise
            self.saver.apply_in_background(plan, root, record["id"],
                                           companion_snapshot(root, record["id"], session_dir))
            self.last_after = record["id"]
            self._report_variables({"vars_saved": True})
            return
        if plan is not None:
            try:
                self.saver.apply(plan, root)
                meta = {**meta, "vars_saved": True}
            except OSError as exc:
                if not os.path.ismount(root):
                    raise
                meta = {**meta, "vars_saved": False, "vars_error": f"{type(exc).__name__}: {exc}"[:300]}
        record = cell_snapshot(root, label, meta)
        self.last_after = record["id"]
        self._report_variables(meta)

    def _settle(self, root: Path, session_dir: str) -> None:
        """Wait for the background writes in flight. A failed one has said so in a companion
        snapshot, unless it died first: then say it here. The next save starts afresh."""
        for label, why, recorded in self.saver.settle():
            self._report_variables({"vars_saved": False, "vars_error": why})
            if not recorded:
                try:
                    companion_snapshot(root, label, session_dir)(why)
                except (DaemonError, OSError):
                    pass

    def _report_variables(self, meta: dict) -> None:
        """Printed only once the snapshot is taken: when the daemon is gone, the one line that
        says cells are not snapshotted covers the variables too."""
        if not meta["vars_saved"]:
            if not self.vars_warned:
                self.vars_warned = True
                print(f"cowfs: variables are not being saved ({meta['vars_error']}); files are still "
                      "snapshotted", file=sys.stderr)
            return
        self.vars_warned = False
        for name, why in self.saver.unsaveable().items():
            if name not in self.reported_unsaveable:
                self.reported_unsaveable.add(name)
                print(f"cowfs: {name} will not come back with %cowfs restore: {why}", file=sys.stderr)

    def _warn(self, exc: BaseException) -> None:
        if not self.warned:
            self.warned = True
            print(f"cowfs: cells are not being snapshotted ({exc})", file=sys.stderr)


def background_allowed(plan: Any) -> bool:
    """Fork only where it pays and is safe: big buffers to hash, a POSIX kernel, not turned off
    (COWFS_VARS_BACKGROUND=0, e.g. where a GPU context or a C library's threads make fork unsafe).
    COWFS_VARS_BACKGROUND_MIN sets "big" in bytes (the tests set it low to fork on every save)."""
    threshold = int(os.environ.get("COWFS_VARS_BACKGROUND_MIN", BACKGROUND_MIN_BYTES))
    return (hasattr(os, "fork") and plan.buffer_bytes >= max(threshold, 1)
            and os.environ.get("COWFS_VARS_BACKGROUND", "1") != "0")


def cell_snapshot(root: Path, label: str, meta: dict) -> dict:
    """A cell waits for its snapshots, so they are lazy: they never wait for the disk, and the
    daemon lists them a moment later, when their data is committed."""
    return snapshot(root, label, meta, timeout=SNAPSHOT_TIMEOUT, lazy=True)


def companion_snapshot(root: Path, after: str, session_dir: str):
    """What the forked child does once the variables are written (or could not be)."""
    def take(error: str | None) -> None:
        meta = {"kind": "vars", "for": after, "vars": session_dir, "vars_saved": error is None}
        if error is not None:
            meta["vars_error"] = error
        cell_snapshot(root, f"variables of {after}", meta)

    return take


def restore(shell: Any, ref: str, names: list[str] | None = None, trust: bool = False) -> None:
    """``%cowfs restore <snap> [--trust] [names]``: the variables as they were at that snapshot
    (only ``names`` and what shares objects with them, when given)."""
    try:
        store = open_store(resolve_store_path(os.environ.get("COWFS_STORE")), readonly=True)
        try:
            record = store.resolve_snapshot(ref)
            values, problems = load_namespace(store, record, names, trust)
        finally:
            store.close()
    except (DaemonError, StoreError, RestoreError) as exc:
        print(f"cowfs: {exc}", file=sys.stderr)
        return
    shell.user_ns.update(values)
    print(f"restored {len(values)} variables from {record.name}: {', '.join(sorted(values)) or '(none)'}")
    for problem in problems:
        print(f"  {problem}")


def cowfs_magic(shell: Any, line: str) -> None:
    """%cowfs restore SNAP [--trust] [NAME ...] | log [--cells] | diff A B | snap -m LABEL | blame PATH | status"""
    import click

    from cowfs.cli.main import cli

    args = shlex.split(line)
    if args[:1] == ["restore"]:
        trust = "--trust" in args
        rest = [a for a in args[1:] if a != "--trust"]
        if not rest:
            print("usage: %cowfs restore SNAPSHOT [--trust] [NAME ...]", file=sys.stderr)
            return
        restore(shell, rest[0], rest[1:] or None, trust)
        return
    try:
        cli.main(args=args, prog_name="%cowfs", standalone_mode=False)
    except click.ClickException as exc:
        print(f"cowfs: {exc.format_message()}", file=sys.stderr)
    except click.exceptions.Exit:
        pass
    except click.Abort:
        pass


_active: CellSnapshots | None = None


def load_ipython_extension(ipython: Any) -> None:
    global _active
    if _active is not None:
        return
    track_namespace(ipython)
    _active = CellSnapshots(ipython)
    _active.register()
    ipython.register_magic_function(lambda line: cowfs_magic(ipython, line), "line", "cowfs")
    restore_on_start(ipython)


def restore_on_start(shell: Any) -> None:
    """`cowfs open` leaves a note in the branch it mounts: the first kernel started there takes
    that moment's variables back, then removes the note (later kernels start clean; `%cowfs
    restore` is there for them)."""
    try:
        marker = Path(mount_for(os.getcwd()).mountpoint) / RESTORE_ON_START
        if not marker.is_file():
            return
        ref = json.loads(marker.read_text())["snapshot"]
    except (DaemonError, OSError, ValueError, KeyError, TypeError):
        return  # not in a mount, or no note: nothing to do
    restore(shell, ref)
    try:
        marker.unlink()
    except OSError:
        pass


def unload_ipython_extension(ipython: Any) -> None:
    global _active
    if _active is not None:
        _active.unregister()
        _active = None
