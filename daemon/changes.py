"""Which paths changed since the last snapshot, named from what the kernel tells the daemon.

A snapshot records them, so `cowfs diff` of two consecutive snapshots (what a cell changed)
looks at those paths only instead of walking both trees: its cost follows the change, not the
workspace. The engine keeps no parent links, but every inode the kernel holds reached it by a
name (lookup, create, a listing), and the kernel holds every ancestor of what it holds. When a
change cannot be named (an inode the kernel has forgotten, a file with several names, changes
made before this daemon started), the epoch is marked unknown and diff walks, as before.
"""

from __future__ import annotations

from cowfs.fs.store import ROOT_INODE

MAX_PATHS = 1000  # a cell's worth; beyond it diff walks, and the snapshot record stays small
MAX_DEPTH = 4096


class ChangedPaths:
    def __init__(self) -> None:
        self.names: dict[int, tuple[int, bytes]] = {}  # inode -> (parent, name), while held
        self.paths: set[bytes] = set()
        self.seen: set[int] = set()  # inodes already counted this epoch (writes come by the thousand)
        self.complete = False  # the first epoch may hold changes of an earlier daemon

    def named(self, ino: int, parent: int, name: bytes) -> None:
        self.names[ino] = (parent, name)

    def forgotten(self, ino: int) -> None:
        self.names.pop(ino, None)

    def path(self, ino: int) -> bytes | None:
        parts = []
        for _ in range(MAX_DEPTH):
            if ino == ROOT_INODE:
                return b"/".join(reversed(parts))
            known = self.names.get(ino)
            if known is None:
                return None
            ino, name = known
            parts.append(name)
        return None

    def _add(self, path: bytes | None) -> None:
        if path is None or len(self.paths) >= MAX_PATHS:
            self.complete = False
        elif self.complete:
            self.paths.add(path)

    def entry_changed(self, parent: int, name: bytes) -> None:
        where = self.path(parent)
        self._add(None if where is None else (where + b"/" + name if where else name))

    def inode_changed(self, ino: int, nlink: int) -> None:
        if ino in self.seen:
            return
        self.seen.add(ino)
        self._add(self.path(ino) if nlink <= 1 else None)  # another name would change unseen

    def take(self) -> list[str] | None:
        """The paths changed in the epoch a snapshot closes (None: unknown), and a new epoch."""
        taken = sorted(p.decode("utf-8", "surrogateescape") for p in self.paths) if self.complete else None
        self.paths, self.seen, self.complete = set(), set(), True
        return taken
