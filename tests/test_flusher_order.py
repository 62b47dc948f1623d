"""The flusher keeps the two orderings the store relies on (docs/write-path.md), with several
batches queued and packs filling up meanwhile:

* a batch commits only once the pack bytes it refers to are durable. Otherwise a machine crash
  could leave an index pointing at garbage; the crash test sees that only if the crash lands in
  the gap, so here every commit is checked against what was fsynced at that moment;
* a full pack is closed (unlocked) only once every batch sealed into it has committed, since
  gc takes an unlocked pack as fully indexed and would delete chunks still to be committed.

Both broke in a trial that sealed the next batch while the previous one committed (session 10,
docs/benchmarks.md); this test failed on each. The second test checks when a flush starts."""

from __future__ import annotations

import os
import stat

import trio

from cowfs.daemon.flusher import Flusher
from cowfs.fs import packs
from cowfs.fs.packs import PackWriter
from cowfs.fs.store import ROOT_INODE, Store
from cowfs.fs.tree import Tree

MiB = 1 << 20


def test_commits_wait_for_their_pack_bytes_and_packs_close_after_their_commits(store: Store, monkeypatch):
    durable: dict[int, int] = {}  # pack id -> bytes fsynced (or closed, which syncs)
    committed_end: dict[int, int] = {}  # pack id -> end of the last record a commit refers to
    checked: list[int] = []
    closed: list[int] = []
    real_sync, real_close, real_commit = PackWriter.sync, PackWriter.close, Tree.write_batch

    def sync(writer: PackWriter) -> None:
        size = writer.size  # what this fsync covers at least
        real_sync(writer)
        durable[writer.pack_id] = max(durable.get(writer.pack_id, 0), size)

    def close(writer: PackWriter) -> None:
        size = writer.size  # random data: every record appended is one that a commit refers to
        assert committed_end.get(writer.pack_id, 0) == size, \
            f"pack {writer.pack_id} is unlocked before the batches sealed into it have committed"
        closed.append(writer.pack_id)
        real_close(writer)
        durable[writer.pack_id] = max(durable.get(writer.pack_id, 0), size)

    def write_batch(tree: Tree, batch, sealed) -> int:
        for location in sealed.written.values():
            assert location.offset + location.stored_len <= durable.get(location.pack, 0), \
                f"epoch {batch.epoch} commits pack {location.pack} bytes that are not durable yet"
            end = location.offset + location.stored_len
            committed_end[location.pack] = max(committed_end.get(location.pack, 0), end)
        checked.append(len(sealed.written))
        return real_commit(tree, batch, sealed)

    monkeypatch.setattr(packs, "PACK_ROTATE_BYTES", 40 * MiB)  # a new pack every three batches
    monkeypatch.setattr(PackWriter, "sync", sync)
    monkeypatch.setattr(PackWriter, "close", close)
    monkeypatch.setattr(Tree, "write_batch", write_batch)
    tree = Tree(store, 1)
    ino, _ = tree.create(ROOT_INODE, b"data.bin", stat.S_IFREG | 0o644, 0, 0)
    written = [os.urandom(16 * MiB) for _ in range(12)]

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
    assert len(closed) == 3  # the packs filled up while batches were in flight
    assert tree.read(ino, 5 * 16 * MiB, 16 * MiB) == written[5]


def test_a_flush_starts_at_what_writes_brought_or_at_what_dirty_blocks_hold(store: Store, monkeypatch):
    """Random 4 KiB writes into stored 128 KiB blocks fill memory 32x faster than they bring data;
    flushing them by memory alone sealed and read back the same blocks over and over. The
    flusher starts a batch at DIRTY_FLUSH_BYTES written, or at DIRTY_MEMORY_BYTES held."""
    from cowfs.daemon import flusher as flusher_module
    from cowfs.fs.tree import BLOCK_SIZE

    monkeypatch.setattr(flusher_module, "DIRTY_FLUSH_BYTES", 1 * MiB)
    monkeypatch.setattr(flusher_module, "DIRTY_MEMORY_BYTES", 8 * MiB)
    tree = Tree(store, 1)
    ino, _ = tree.create(ROOT_INODE, b"table.db", stat.S_IFREG | 0o644, 0, 0)
    tree.write(ino, 0, os.urandom(16 * MiB))
    tree.flush()
    page = os.urandom(4096)

    async def scenario() -> None:
        flusher = Flusher(tree)
        async with trio.open_nursery() as nursery:
            await nursery.start(flusher.run)
            for block in range(32):  # 128 KiB written, 4 MiB of blocks dirty: nothing to do yet
                tree.write(ino, block * BLOCK_SIZE + 4096, page)
                await flusher.throttle()
            assert not tree.inflight and tree.dirty_written == 32 * 4096 and tree.dirty_bytes == 4 * MiB
            for block in range(32, 72):  # 9 MiB of blocks dirty: memory says flush
                tree.write(ino, block * BLOCK_SIZE + 4096, page)
                await flusher.throttle()
            assert tree.dirty_bytes < 8 * MiB, "8 MiB of dirty blocks started no flush"
            await flusher.flush(durable=False)
            for offset in range(0, MiB, 256 * 1024):  # whole blocks: 1 MiB written says flush
                assert not tree.inflight and tree.dirty_written == offset
                tree.write(ino, offset, os.urandom(256 * 1024))
                await flusher.throttle()
            assert tree.dirty_written == 0, "1 MiB written started no flush"
            nursery.cancel_scope.cancel()

    trio.run(scenario)
