"""`cowfs init --import DIR`: an existing directory becomes the first snapshot of main."""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

from cowfs.fs.errors import StoreError
from cowfs.fs.progress import Progress, silent
from cowfs.fs.records import SnapshotRecord
from cowfs.fs.store import MAIN_BRANCH, ROOT_INODE, Store
from cowfs.fs.tree import BLOCK_SIZE, Tree

READ_BYTES = 8 * BLOCK_SIZE
FLUSH_ABOVE = 64 << 20


@dataclass
class ImportReport:
    files: int = 0
    directories: int = 0
    links: int = 0
    bytes: int = 0
    snapshot: SnapshotRecord | None = None


def import_directory(store: Store, source: Path, progress: Progress = silent) -> ImportReport:
    """Copy ``source`` (names as bytes, modes, owners, times, user xattrs, hard links) into the
    main branch and snapshot it. Symlinks are copied as links, never followed."""
    if not source.is_dir():
        raise StoreError(f"cannot import {source}: it is not a directory")
    tree = Tree(store, store.branch_named(MAIN_BRANCH).id)
    report = ImportReport()
    seen: dict[tuple[int, int], int] = {}
    _copy_dir(tree, os.fsencode(source), ROOT_INODE, report, seen, progress)
    tree.flush()
    report.snapshot, _ = tree.snapshot(f"import of {source}", {"kind": "import", "source": str(source)})
    tree.flush()
    tree.give_back_snapshot_ids()
    store.sync()
    return report


def _copy_dir(tree: Tree, path: bytes, parent: int, report: ImportReport, seen: dict, progress: Progress) -> None:
    with os.scandir(path) as entries:
        for entry in sorted(entries, key=lambda e: e.name):
            info = entry.stat(follow_symlinks=False)
            key = (info.st_dev, info.st_ino)
            if not stat.S_ISDIR(info.st_mode) and info.st_nlink > 1 and key in seen:
                tree.link(seen[key], parent, entry.name)
                report.links += 1
                continue
            target = os.readlink(entry.path) if stat.S_ISLNK(info.st_mode) else b""
            ino, _ = tree.create(parent, entry.name, info.st_mode, info.st_uid, info.st_gid,
                                 info.st_rdev if stat.S_ISCHR(info.st_mode) or stat.S_ISBLK(info.st_mode) else 0,
                                 target)
            seen[key] = ino
            if stat.S_ISDIR(info.st_mode):
                report.directories += 1
                _copy_dir(tree, entry.path, ino, report, seen, progress)
            elif stat.S_ISREG(info.st_mode):
                report.files += 1
                report.bytes += _copy_data(tree, entry.path, ino)
                progress("importing files", report.files, 0)
            _copy_xattrs(tree, entry.path, ino)
            if not stat.S_ISLNK(info.st_mode):
                tree.setattr(ino, atime_ns=info.st_atime_ns, mtime_ns=info.st_mtime_ns)


def _copy_data(tree: Tree, path: bytes, ino: int) -> int:
    copied = 0
    with open(path, "rb") as source:
        while chunk := source.read(READ_BYTES):
            tree.write(ino, copied, chunk)
            copied += len(chunk)
            if tree.dirty_bytes > FLUSH_ABOVE:
                tree.flush()
    return copied


def _copy_xattrs(tree: Tree, path: bytes, ino: int) -> None:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return
    for name in names:
        if name.startswith("user."):
            tree.setxattr(ino, name.encode(), os.getxattr(path, name, follow_symlinks=False))
