"""What changed between two trees (two snapshots, or a snapshot and a live head)."""

from __future__ import annotations

from dataclasses import dataclass

from cowfs.fs.records import InodeAttrs
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
    old, new = _index(before), _index(after)
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
