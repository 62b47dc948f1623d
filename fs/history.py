"""Reading the snapshot history as a person asks about it: cell by cell, and path by path."""

from __future__ import annotations

from dataclasses import dataclass

from cowfs.fs.diff import same_content
from cowfs.fs.records import SnapshotRecord
from cowfs.fs.store import Store
from cowfs.fs.tree import Tree


@dataclass(frozen=True)
class CellRun:
    """One executed cell: the snapshots around it and what it did."""

    before: SnapshotRecord | None
    after: SnapshotRecord

    @property
    def meta(self) -> dict:
        return self.after.meta


def cell_runs(snapshots: list[SnapshotRecord]) -> list[CellRun]:
    """Pair each after-cell snapshot with the before-cell snapshot just preceding it on its branch."""
    last_before: dict[int, SnapshotRecord] = {}
    runs = []
    for record in sorted(snapshots, key=lambda r: r.id):
        if record.meta.get("kind") != "cell":
            continue
        if record.meta.get("phase") == "before":
            last_before[record.branch] = record
        elif record.meta.get("phase") == "after":
            before = last_before.pop(record.branch, None)
            if before is not None and before.meta.get("source_hash") != record.meta.get("source_hash"):
                before = None
            runs.append(CellRun(before, record))
    return runs


def variables_record(record: SnapshotRecord, by_name: dict[str, SnapshotRecord]) -> SnapshotRecord | None:
    """The snapshot whose files hold ``record``'s variables, None while they are being written.

    A before-cell snapshot's variables are those of the after-cell snapshot before it
    (``vars_from``). An after-cell snapshot whose buffers were written in the background
    (``vars_pending``) has them in its companion (``kind: vars``, ``for``: its name)."""
    if record.meta.get("phase") == "before" and record.meta.get("vars_from") in by_name:
        record = by_name[record.meta["vars_from"]]
    if not record.meta.get("vars_pending"):
        return record
    return next((r for r in by_name.values() if r.meta.get("kind") == "vars" and r.meta.get("for") == record.name),
                None)


def is_durable(store: Store, record: SnapshotRecord) -> bool:
    """A snapshot of an unchanged tree shares its epoch, and its durability, with an earlier one."""
    holder = (store.snapshot(record.same_as) if record.same_as else None) or record
    return record.durable or holder.durable


def variables_state(store: Store, record: SnapshotRecord, by_name: dict[str, SnapshotRecord]) -> str | None:
    """Whether a cell's variables can be restored: "complete" once the snapshot holding them is
    on disk, "writing" before, "not saved: why" when the kernel could not save them, None when
    no kernel saved variables there."""
    if not record.meta.get("vars"):
        return None
    source = variables_record(record, by_name)
    if source is None:
        return "writing"
    if source.meta.get("vars_saved") is False:
        return f"not saved: {source.meta.get('vars_error', 'unknown reason')}"
    return "complete" if is_durable(store, source) else "writing"


def files_changed(store: Store, record: SnapshotRecord) -> int:
    """How many files (not directories) the epoch closed by ``record`` changed or removed: the
    user's files, when the snapshot named its paths (cowfs's own ``.cowfs/``, where the kernel
    keeps variables, is not theirs); else every changed inode, counted from the record."""
    if record.same_as is not None:
        return 0
    tree = Tree.at_snapshot(store, record)
    named = record.meta.get("changed_paths")
    if isinstance(named, list):
        hits = (tree.resolve(path.encode("utf-8", "surrogateescape")) for path in named if not is_cowfs_own(path))
        return sum(hit is None or not hit[1].is_dir for hit in hits)
    count = record.changed_count - len(record.changed_inodes)  # beyond the cap: counted as files
    for ino in record.changed_inodes:
        try:
            count += not tree.getattr(ino).is_dir
        except OSError:
            count += 1  # removed in that epoch
    return count


def is_cowfs_own(path: str) -> bool:
    """Paths under ``.cowfs/`` are cowfs's (saved variables, notes), not the user's work."""
    return path == ".cowfs" or path.startswith(".cowfs/")


def cell_row(store: Store, run: CellRun, branch_names: dict[int, str],
             by_name: dict[str, SnapshotRecord]) -> dict:
    """One executed cell as `log --cells --json` and the Cell history panel show it."""
    meta = run.meta
    return {
        "before": run.before.name if run.before else None, "after": run.after.name,
        "time": run.after.created, "branch": branch_names.get(run.after.branch), "notebook": meta.get("notebook"),
        "cell_id": meta.get("cell_id"), "execution_count": meta.get("execution_count"),
        "first_line": meta.get("first_line", ""), "success": meta.get("success"), "error": meta.get("error"),
        "files_changed": files_changed(store, run.after), "bytes_added": run.after.bytes_added,
        "variables": variables_state(store, run.after, by_name),
        "label": run.after.label, "pinned": run.after.pinned and (run.before is None or run.before.pinned),
    }


def _path_changed(store: Store, previous: SnapshotRecord, current: SnapshotRecord, path: bytes) -> str | None:
    old = Tree.at_snapshot(store, previous).resolve(path)
    new_tree = Tree.at_snapshot(store, current)
    new = new_tree.resolve(path)
    if old is None and new is None:
        return None
    if old is None:
        return "created"
    if new is None:
        return "deleted"
    if old[0] != new[0]:
        return "replaced"
    if current.same_as is not None:
        return None
    listed_all = current.changed_count <= len(current.changed_inodes)
    if listed_all:
        return "modified" if new[0] in current.changed_inodes else None
    return None if same_content(Tree.at_snapshot(store, previous), *old, new_tree, *new) else "modified"


def blame(store: Store, branch_id: int, path: bytes) -> list[tuple[SnapshotRecord, str]]:
    """Every snapshot of the branch whose epoch changed ``path``, with how."""
    records = sorted((r for r in store.snapshots() if r.branch == branch_id), key=lambda r: r.id)
    found = []
    for previous, current in zip(records, records[1:]):
        how = _path_changed(store, previous, current, path)
        if how:
            found.append((current, how))
    return found
