"""What changed between two trees (two snapshots, or a snapshot and a live head)."""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Iterable

from cowfs.fs.records import InodeAttrs, SnapshotRecord
from cowfs.fs.tree import Tree


@dataclass(frozen=True)
class Change:
    path: str
    kind: str  # "added", "removed" or "modified"
    size_before: int | None
    size_after: int | None


def _index(tree: Tree) -> dict[bytes, tuple[int, InodeAttrs]]:
    return {path: (ino, attrs) for path, ino, attrs in tree.walk()}


def same_content(a: Tree, ino_a: int, attrs_a: InodeAttrs, b: Tree, ino_b: int, attrs_b: InodeAttrs) -> bool:
    if attrs_a.mode != attrs_b.mode or attrs_a.size != attrs_b.size or attrs_a.target != attrs_b.target:
        return False
    if attrs_a.is_dir:
        return True  # a directory's own content is its entries, which are compared path by path
    # Equal attributes prove nothing for a file: under the daemon the kernel stamps writes with
    # its coarse clock, so a rewrite of the same size within one tick keeps mtime as it was.
    return not attrs_a.is_reg or a.block_digests(ino_a) == b.block_digests(ino_b)


def diff_trees(before: Tree, after: Tree) -> list[Change]:
    return _compare(before, after, _index(before), _index(after))


def diff_paths(before: Tree, after: Tree, paths: Iterable[str]) -> list[Change]:
    """``diff_trees`` restricted to ``paths`` and everything below those that are directories
    (a directory made, removed or moved changes all it holds): what a snapshot that named its
    changes costs to compare with the one before it, whatever the size of the workspace."""
    old: dict[bytes, tuple[int, InodeAttrs]] = {}
    new: dict[bytes, tuple[int, InodeAttrs]] = {}
    for text in paths:
        path = text.encode("utf-8", "surrogateescape")
        for tree, found in ((before, old), (after, new)):
            hit = tree.resolve(path)
            if hit is None:
                continue
            found[path] = hit
            if hit[1].is_dir:
                found.update((sub, (ino, attrs)) for sub, ino, attrs in tree.walk(hit[0], path))
    return _compare(before, after, old, new)


def named_changes(before: SnapshotRecord, after: SnapshotRecord) -> list[str] | None:
    """The paths that can differ between two snapshots, when their records say (None: walk)."""
    if before.branch != after.branch:
        return None
    if before.epoch == after.epoch:
        return []  # nothing changed in between: the later one shares the earlier one's epoch
    named = after.meta.get("changed_paths")
    return named if after.epoch == before.epoch + 1 and isinstance(named, list) else None


def snapshot_diff(before: SnapshotRecord, tree_before: Tree, after: SnapshotRecord,
                  tree_after: Tree) -> list[Change]:
    """Two snapshots' differences: from the paths the later one recorded as changed when it
    directly follows the other on its branch, else by walking both trees."""
    named = named_changes(before, after)
    return diff_trees(tree_before, tree_after) if named is None else diff_paths(tree_before, tree_after, named)


def _compare(before: Tree, after: Tree, old: dict[bytes, tuple[int, InodeAttrs]],
             new: dict[bytes, tuple[int, InodeAttrs]]) -> list[Change]:
    changes = []
    for path in sorted(old.keys() | new.keys()):
        name = path.decode("utf-8", "surrogateescape")
        if path not in new:
            changes.append(Change(name, "removed", old[path][1].size, None))
        elif path not in old:
            changes.append(Change(name, "added", None, new[path][1].size))
        elif not same_content(before, *old[path], after, *new[path]):
            changes.append(Change(name, "modified", old[path][1].size, new[path][1].size))
    return changes


TEXT_PATCH_MAX = 256 * 1024  # larger files are data, not something to read as a patch


def text_patch(before: Tree, after: Tree, change: Change, limit: int = TEXT_PATCH_MAX) -> str | None:
    """A unified diff of a small text file's two versions; None for directories, links, binary
    or large files."""
    sides = []
    for tree, size in ((before, change.size_before), (after, change.size_after)):
        if size is None:
            sides.append(b"")
            continue
        hit = tree.resolve(change.path.encode("utf-8", "surrogateescape"))
        if hit is None or not hit[1].is_reg or hit[1].size > limit:
            return None
        sides.append(tree.read(hit[0], 0, hit[1].size))
    try:
        old, new = (side.decode("utf-8") for side in sides)
    except UnicodeDecodeError:
        return None
    if "\0" in old or "\0" in new:
        return None
    return "".join(difflib.unified_diff(old.splitlines(True), new.splitlines(True),
                                        f"a/{change.path}", f"b/{change.path}"))
