"""The flusher commits a batch only once the pack bytes it refers to are durable, although it
seals the next batch while the previous one syncs and commits (docs/write-path.md).

A commit that indexed chunks whose pack bytes were still only in the page cache would, after a
machine crash, leave an index pointing at garbage. The crash test finds that only if the crash
lands in the gap; here every commit is checked against what has been fsynced at that moment,
with the real engine and flusher and several batches in flight at once."""

from __future__ import annotations

import os
import stat

import trio

from cowfs.daemon.flusher import Flusher
from cowfs.fs.packs import PackWriter
from cowfs.fs.store import ROOT_INODE, Store
from cowfs.fs.tree import Tree

MiB = 1 << 20


def test_every_commit_refers_only_to_pack_bytes_already_durable(store: Store, monkeypatch):
    durable: dict[int, int] = {}  # pack id -> bytes fsynced (or closed, which syncs)
    checked: list[int] = []
    real_sync, real_close, real_commit = PackWriter.sync, PackWriter.close, Tree.commit_batch

    def sync(writer: PackWriter) -> None:
        size = writer.size  # what this fsync covers at least
        real_sync(writer)
        durable[writer.pack_id] = max(durable.get(writer.pack_id, 0), size)

    def close(writer: PackWriter) -> None:
        size = writer.size
        real_close(writer)
        durable[writer.pack_id] = max(durable.get(writer.pack_id, 0), size)

    def commit_batch(tree: Tree, batch, sealed) -> int:
        for location in sealed.written.values():
            assert location.offset + location.stored_len <= durable.get(location.pack, 0), \
                f"epoch {batch.epoch} commits pack {location.pack} bytes that are not durable yet"
        checked.append(len(sealed.written))
        return real_commit(tree, batch, sealed)

    monkeypatch.setattr(PackWriter, "sync", sync)
    monkeypatch.setattr(PackWriter, "close", close)
    monkeypatch.setattr(Tree, "commit_batch", commit_batch)
    tree = Tree(store, 1)
    ino, _ = tree.create(ROOT_INODE, b"data.bin", stat.S_IFREG | 0o644, 0, 0)
    written = [os.urandom(24 * MiB) for _ in range(12)]  # 288 MiB: the pack rotates twice

    async def write_all_then_wait() -> None:
        flusher = Flusher(tree)
        async with trio.open_nursery() as nursery:
            await nursery.start(flusher.run)
            for index, data in enumerate(written):
                tree.write(ino, index * len(data), data)
                last = flusher.kick()  # queue batch after batch without waiting
            await flusher.wait_committed(last)
            nursery.cancel_scope.cancel()

    trio.run(write_all_then_wait)
    assert len(checked) == len(written) and all(checked)
    assert tree.read(ino, 5 * 24 * MiB, 24 * MiB) == written[5]
