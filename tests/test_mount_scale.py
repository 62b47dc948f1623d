"""A big tree through a real mount: half its files in one directory, half spread over many.

CI builds 200,000 files; the soak sets COWFS_SCALE_FILES (two million is a documented run:
`COWFS_SCALE_FILES=2000000 .venv/bin/python -m pytest tests/test_mount_scale.py -s`). The tree
is built with the engine (a FUSE create costs ~0.4 ms, a million would take most of an hour),
then everything a user does with it goes through the mount."""

from __future__ import annotations

import os
import random
import time

from conftest import needs_fuse
from cowfs.fs.store import ROOT_INODE, Store
from cowfs.fs.tree import Tree

pytestmark = needs_fuse
FILE_MODE = 0o100644
DIR_MODE = 0o040755


def build_tree(store_path, count: int) -> None:
    store = Store.open(store_path)
    try:
        tree = Tree(store, 1)
        flat, _ = tree.create(ROOT_INODE, b"flat", DIR_MODE, 0, 0)
        spread, _ = tree.create(ROOT_INODE, b"spread", DIR_MODE, 0, 0)
        subdirs = [tree.create(spread, b"d%03d" % i, DIR_MODE, 0, 0)[0] for i in range(100)]
        for i in range(count):
            parent = flat if i % 2 == 0 else subdirs[i % 100]
            ino, _ = tree.create(parent, b"file-%07d" % i, FILE_MODE, 0, 0)
            tree.write(ino, 0, b"%d\n" % i)
            if i % 100_000 == 99_999:
                tree.flush()  # bounds the memory the build itself needs
        tree.flush()
    finally:
        store.close()


def daemon_memory_mib(workspace, mnt) -> dict[str, float]:
    """RssAnon is what the daemon allocates; RssFile is mostly the LMDB index mapped in, pages
    of the kernel's cache that it can drop at will."""
    pid = workspace.daemon_pid(mnt)
    fields = dict(line.split(":", 1) for line in open(f"/proc/{pid}/status"))
    return {name: int(fields[name].split()[0]) / 1024 for name in ("RssAnon", "RssFile")}


def test_a_tree_of_many_files_lists_looks_up_snapshots_and_changes(workspace):
    count = int(os.environ.get("COWFS_SCALE_FILES", "200000"))
    started = time.monotonic()
    build_tree(workspace.store, count)
    built = time.monotonic()
    mnt = workspace.mount()
    flat = mnt / "flat"
    listed = os.listdir(flat)
    assert len(listed) == (count + 1) // 2
    assert len(set(listed)) == len(listed)
    rng = random.Random(5)
    for i in rng.sample(range(0, count, 2), 500):
        assert (flat / ("file-%07d" % i)).read_bytes() == b"%d\n" % i
    walked = sum(len(files) for _, _, files in os.walk(mnt / "spread"))
    assert walked == count // 2
    before = workspace.snap(mnt, "big", wait=True)
    (flat / "new").write_text("one more")
    os.unlink(flat / "file-0000000")
    after = workspace.snap(mnt, "changed", wait=True)
    assert after["bytes_added"] < 1 << 20, "a small change in a big tree must cost little"
    assert len(os.listdir(flat)) == (count + 1) // 2
    memory = daemon_memory_mib(workspace, mnt)
    assert memory["RssAnon"] < 300, f"the daemon holds {memory} MiB after listing {count} files"
    back = workspace.mount(before["id"], name="back")
    assert (back / "flat" / "file-0000000").read_bytes() == b"0\n"
    assert not (back / "flat" / "new").exists()
    print(f"\n{count} files: built in {built - started:.1f} s, listed/looked up/walked/snapshotted through "
          f"the mount in {time.monotonic() - built:.1f} s, daemon memory (MiB) {memory}")
