"""What the Cell history panel asks of a workspace, as blocking functions the REST handlers run
in a thread: one notebook's executed cells (paged, newest first), what one cell changed, and
the actions on a cell (open a branch there, pin, label).

Every request names a notebook by its path under the Jupyter server's root. That path is the
only way in: it must stay under the root once symlinks are resolved, it must lie in a cowfs
mount whose daemon is this user's own (its control socket is 0600 and checks the peer), and
every snapshot a request names must belong to that mount's branch. So the browser reaches the
one store and branch it is looking at, and nothing else.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from cowfs.cli.client import DaemonError, mount_for, request
from cowfs.fs.errors import StoreError
from cowfs.fs.history import CellRun, cell_row, cell_runs, is_cowfs_own
from cowfs.fs.records import SnapshotRecord
from cowfs.fs.remote.lazy import install_fetcher
from cowfs.fs.store import Store

PAGE_MAX = 500  # rows per request: the panel asks for what it shows, a screenful or two
CHANGES_LISTED = 1000  # paths listed for one cell; the count says how many more there were
PATCHES_SHOWN = 50  # small text files shown line by line
OPEN_TIMEOUT = 120.0


class BadRequest(Exception):
    """The browser asked for something this workspace does not hold; the message says what."""


class NotInMount(Exception):
    """The notebook is not in a cowfs mount of this user: the panel says so in one line."""


@dataclass(frozen=True)
class Workspace:
    """A notebook pinned to the mount, store and branch that hold it."""

    root: Path  # the server's root directory, symlinks resolved
    notebook: Path  # the notebook's real path
    mountpoint: Path
    store: Path
    branch_id: int
    branch: str

    @property
    def notebook_in_mount(self) -> Path:
        return self.notebook.relative_to(self.mountpoint)


def locate(root_dir: str, api_path: str) -> Workspace:
    """The workspace holding the notebook at ``api_path`` (as the browser names it)."""
    if not api_path or "\0" in api_path:
        raise BadRequest("no notebook path given")
    root = Path(os.path.realpath(root_dir))
    notebook = Path(os.path.realpath(root / api_path.lstrip("/")))
    if not notebook.is_relative_to(root):
        raise BadRequest(f"{api_path!r} is outside the directory this server serves")
    try:
        entry = mount_for(notebook)
        status = request(entry.mountpoint, {"op": "status"}, timeout=5)
    except DaemonError as exc:
        raise NotInMount(f"{api_path} is not in a cowfs workspace ({exc})") from None
    return Workspace(root, notebook, Path(entry.mountpoint), Path(status["store"]), int(status["branch_id"]),
                     str(status["branch"]))


class _RunsCache:
    """The cell runs of each store, rebuilt only when its snapshots change, decoding only the
    records that changed: the panel polls, and a log of 10,000 cells is 20,000 records."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: dict[str, tuple[tuple[int, int], dict[bytes, SnapshotRecord], list[SnapshotRecord],
                                       list[CellRun]]] = {}

    def get(self, store: Store) -> tuple[list[SnapshotRecord], list[CellRun]]:
        key, version = str(store.path), store.snapshots_version()
        with self._lock:
            version_seen, decoded, records, runs = self._entries.get(key) or ((-1, -1), {}, [], [])
            if version_seen != version:
                records = store.snapshots(decoded)
                runs = cell_runs(records)
                self._entries[key] = (version, decoded, records, runs)
        return records, runs


_runs_cache = _RunsCache()


def _notebook_runs(workspace: Workspace, runs: list[CellRun]) -> list[CellRun]:
    """The runs of this notebook on this branch, newest first. A kernel records the notebook's
    path as the server gave it; symlinks are resolved once per distinct path."""
    real: dict[str, str] = {}

    def same_notebook(path: str | None) -> bool:
        if not path:
            return False
        if path not in real:
            real[path] = os.path.realpath(path)
        return real[path] == str(workspace.notebook)

    return [run for run in reversed(runs)
            if run.after.branch == workspace.branch_id and same_notebook(run.meta.get("notebook"))]


def cells(workspace: Workspace, offset: int, limit: int) -> dict:
    """One page of the notebook's executed cells, newest first, with the total for the scrollbar."""
    offset, limit = max(0, offset), max(1, min(limit, PAGE_MAX))
    with _open(workspace, readonly=True) as store:
        records, runs = _runs_cache.get(store)
        mine = _notebook_runs(workspace, runs)
        by_name = {r.name: r for r in records}
        names = {workspace.branch_id: workspace.branch}
        rows = [cell_row(store, run, names, by_name) for run in mine[offset:offset + limit]]
    return {"notebook": str(workspace.notebook_in_mount), "mountpoint": str(workspace.mountpoint),
            "branch": workspace.branch, "total": len(mine), "offset": offset, "rows": rows,
            "head": records[-1].id if records else 0}


def changes(workspace: Workspace, before: str | None, after: str) -> dict:
    """What a cell changed: its after-cell snapshot against its before-cell one (else the
    snapshot just before it on the branch), from the paths the snapshot named when it can."""
    from cowfs.fs.diff import snapshot_diff, text_patch
    from cowfs.fs.tree import Tree

    with _open(workspace, readonly=True) as store:
        new = _on_branch(workspace, store, after)
        old = _on_branch(workspace, store, before) if before else _previous(store, new)
        if old is None:
            return {"before": None, "after": new.name, "changes": [], "total": 0,
                    "note": "the first snapshot of this branch: nothing before it to compare with"}
        tree_before, tree_after = Tree.at_snapshot(store, old), Tree.at_snapshot(store, new)
        found = [c for c in snapshot_diff(old, tree_before, new, tree_after) if not is_cowfs_own(c.path)]
        listed = []
        for number, change in enumerate(found[:CHANGES_LISTED]):
            patch = text_patch(tree_before, tree_after, change) if number < PATCHES_SHOWN else None
            listed.append({**change.__dict__, "patch": patch})
    return {"before": old.name, "after": new.name, "changes": listed, "total": len(found), "note": None}


def set_pin(workspace: Workspace, snapshots: list[str], pinned: bool) -> dict:
    from cowfs.fs.retention import set_pinned

    with _open(workspace, readonly=False) as store:
        records = [_on_branch(workspace, store, ref) for ref in snapshots]
        done = [set_pinned(store, record, pinned).name for record in records]
    return {"snapshots": done, "pinned": pinned}


def set_label(workspace: Workspace, snapshot: str, label: str) -> dict:
    from cowfs.fs.retention import set_label as relabel

    if len(label) > 200 or any(ord(ch) < 32 for ch in label):
        raise BadRequest("a label is one line of at most 200 characters")
    with _open(workspace, readonly=False) as store:
        record = relabel(store, _on_branch(workspace, store, snapshot), label)
    return {"snapshot": record.name, "label": record.label}


def open_branch(workspace: Workspace, snapshot: str) -> dict:
    """`cowfs open` from the panel: mount the snapshot as a new branch beside the workspace.
    ``path`` names the notebook there for this server, None when the branch is outside what
    this server serves (the caller then starts a server in the branch)."""
    with _open(workspace, readonly=True) as store:
        record = _on_branch(workspace, store, snapshot)
    directory = _free_directory(Path(f"{workspace.mountpoint}-at-{record.id}"))
    command = [sys.executable, "-m", "cowfs.cli.main", "--store", str(workspace.store), "open", record.name,
               str(directory)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=OPEN_TIMEOUT, cwd="/")
    except subprocess.TimeoutExpired:
        raise BadRequest(f"mounting {record.name} took over {OPEN_TIMEOUT:.0f} s; see `cowfs status`") from None
    if done.returncode != 0:
        raise BadRequest((done.stderr.strip() or done.stdout.strip() or "cowfs open failed").splitlines()[-1])
    notebook = directory / workspace.notebook_in_mount
    served = notebook.is_relative_to(workspace.root)
    return {"snapshot": record.name, "directory": str(directory), "notebook": str(workspace.notebook_in_mount),
            "path": str(notebook.relative_to(workspace.root)) if served else None,
            "restores_variables": "restores" in done.stdout}


def _free_directory(wanted: Path) -> Path:
    """``wanted``, else ``wanted-2``, ``-3``...: opening the same cell twice gives two branches."""
    candidate, number = wanted, 1
    while candidate.exists() or candidate.is_symlink():
        number += 1
        candidate = wanted.with_name(f"{wanted.name}-{number}")
    return candidate


@contextmanager
def _open(workspace: Workspace, readonly: bool) -> Iterator[Store]:
    """The workspace's store, opened per request (a server outlives mounts and unmounts). A
    branch of a lazily mounted remote snapshot reads its files through the remote cache."""
    store = Store.open(workspace.store, readonly=readonly)
    install_fetcher(store)
    try:
        yield store
    finally:
        store.close()


def _on_branch(workspace: Workspace, store: Store, ref: str) -> SnapshotRecord:
    try:
        record = store.resolve_snapshot(ref)
    except StoreError as exc:
        raise BadRequest(str(exc)) from None
    if record.branch != workspace.branch_id:
        raise BadRequest(f"snapshot {record.name} is not on branch {workspace.branch}, the one this notebook is in")
    return record


def _previous(store: Store, record: SnapshotRecord) -> SnapshotRecord | None:
    records, _ = _runs_cache.get(store)  # the log the panel polls is decoded already
    earlier = [r for r in records if r.branch == record.branch and r.id < record.id]
    return earlier[-1] if earlier else None
