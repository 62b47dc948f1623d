"""The flusher keeps the two orderings the store relies on (docs/write-path.md), with several
batches queued, packs filling up meanwhile, and the next batch sealed while the one before it
commits (the pipelining that session 18 kept):

* a batch commits only once the pack bytes it refers to are durable. Otherwise a machine crash
  could leave an index pointing at garbage; the crash test sees that only if the crash lands in
  the gap, so here every commit is checked against what was fsynced at that moment;
* a full pack is closed (unlocked) only once every batch sealed into it has committed, since
  gc takes an unlocked pack as fully indexed and would delete chunks still to be committed.

Both broke in session 10's trial of sealing ahead; these tests failed on each. A seal made
ahead is therefore started only into a pack with room, and used only if that pack is still the
open one. The last test checks when a flush starts."""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass, field

import pytest
import trio

from cowfs.daemon import flusher as flusher_module
from cowfs.daemon.flusher import Flusher
from cowfs.fs import packs
from cowfs.fs.packs import PackWriter
from cowfs.fs.store import ROOT_INODE, Store
from cowfs.fs.tree import Batch, Tree

MiB = 1 << 20


@dataclass
class PackOrder:
    """What the pack writers and commits did, checked as they do it."""

    durable: dict[int, int] = field(default_factory=dict)  # pack id -> bytes fsynced (or closed)
    committed_end: dict[int, int] = field(default_factory=dict)  # pack id -> end of committed records
    checked: list[int] = field(default_factory=list)  # chunks written per commit
    closed: list[int] = field(default_factory=list)
    sealed_ahead: int = 0  # batches sealed while the one before them committed
    commits: int = 0  # attempts, failed ones included
    failing_commit: int | None = None  # the attempt (counted from 1) that fails


@pytest.fixture
def order(monkeypatch) -> PackOrder:
    state = PackOrder()
    real_sync, real_close, real_commit = PackWriter.sync, PackWriter.close, Tree.write_batch
    real_ahead = Flusher._seal_ahead

    def sync(writer: PackWriter) -> None:
        size = writer.size  # what this fsync covers at least
        real_sync(writer)
        state.durable[writer.pack_id] = max(state.durable.get(writer.pack_id, 0), size)

    def close(writer: PackWriter) -> None:
        size = writer.size
        if state.failing_commit is None:  # random data: every record appended is one a commit refers to
            assert state.committed_end.get(writer.pack_id, 0) == size, \
                f"pack {writer.pack_id} is unlocked before the batches sealed into it have committed"
        state.closed.append(writer.pack_id)
        real_close(writer)
        state.durable[writer.pack_id] = max(state.durable.get(writer.pack_id, 0), size)

    def write_batch(tree: Tree, batch, sealed) -> int:
        state.commits += 1
        if state.commits == state.failing_commit:
            raise OSError(errno.ENOSPC, "no space left (injected)")
        for location in sealed.written.values():
            assert location.pack not in state.closed, \
                f"epoch {batch.epoch} commits records of pack {location.pack}, unlocked before this commit"
            assert location.offset + location.stored_len <= state.durable.get(location.pack, 0), \
                f"epoch {batch.epoch} commits pack {location.pack} bytes that are not durable yet"
            end = location.offset + location.stored_len
            state.committed_end[location.pack] = max(state.committed_end.get(location.pack, 0), end)
        state.checked.append(len(sealed.written))
        return real_commit(tree, batch, sealed)

    async def seal_ahead(flusher: Flusher, ahead) -> None:
        state.sealed_ahead += 1
        await real_ahead(flusher, ahead)

    monkeypatch.setattr(packs, "PACK_ROTATE_BYTES", 40 * MiB)  # a new pack every three batches
    monkeypatch.setattr(PackWriter, "sync", sync)
    monkeypatch.setattr(PackWriter, "close", close)
    monkeypatch.setattr(Tree, "write_batch", write_batch)
    monkeypatch.setattr(Flusher, "_seal_ahead", seal_ahead)
    return state


def write_in_batches(tree: Tree, written: list[bytes]) -> int:
    """Write each piece as a batch of its own, queued without waiting; returns the file's inode."""
    ino, _ = tree.create(ROOT_INODE, b"data.bin", stat.S_IFREG | 0o644, 0, 0)

    async def write_all_then_wait() -> None:
        flusher = Flusher(tree)
        async with trio.open_nursery() as nursery:
            await nursery.start(flusher.run)
            for index, data in enumerate(written):
                tree.write(ino, index * len(data), data)
                last = flusher.kick()
            while True:
                try:
                    await flusher.wait_committed(last)
                    break
                except OSError as exc:  # a failure injected: the flusher retries, as after ENOSPC
                    assert exc.errno == errno.ENOSPC
            nursery.cancel_scope.cancel()

    trio.run(write_all_then_wait)
    return ino


def test_commits_wait_for_their_pack_bytes_and_packs_close_after_their_commits(store: Store, order: PackOrder):
    tree = Tree(store, 1)
    written = [os.urandom(16 * MiB) for _ in range(12)]
    ino = write_in_batches(tree, written)
    assert len(order.checked) == len(written) and all(order.checked)
    assert len(order.closed) == 3  # the packs filled up while batches were in flight
    assert order.sealed_ahead, "no batch was sealed while the one before it committed"
    assert tree.read(ino, 5 * 16 * MiB, 16 * MiB) == written[5]


def test_a_failed_commit_drops_what_was_sealed_ahead_of_it_and_loses_nothing(store: Store, order: PackOrder):
    """The commit of an earlier batch fails (the disk filled up) while the next one was sealed
    ahead; its retry seals it again and may rotate the pack, so what was sealed ahead goes to
    waste (gc reclaims it) and the next batch is sealed again in its turn. Records of a failed
    attempt are never committed, so here a pack may close with some; no commit may then refer
    to a closed pack."""
    tree = Tree(store, 1)
    written = [os.urandom(16 * MiB) for _ in range(8)]
    order.failing_commit = 3
    ino = write_in_batches(tree, written)
    assert order.commits == len(written) + 1 and len(order.checked) == len(written) and all(order.checked)
    assert order.sealed_ahead >= 2
    for index, data in enumerate(written):
        assert tree.read(ino, index * 16 * MiB, 16 * MiB) == data


def test_a_flush_starts_at_what_writes_brought_or_at_what_dirty_blocks_hold(store: Store, monkeypatch):
    """Random 4 KiB writes into stored 128 KiB blocks fill memory 32x faster than they bring data;
    flushing them by memory alone sealed and read back the same blocks over and over. The
    flusher starts a batch at DIRTY_FLUSH_BYTES written, or at DIRTY_MEMORY_BYTES held."""
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


def csv_text(size: int, seed: int) -> bytes:
    """Compressible text that shares no block with another seed's."""
    rows = (b"%d,%d,%d\n" % (i, (i * seed) % 1009, seed) for i in range(size // 8))
    return b"".join(rows)[:size]


def test_a_flusher_behind_stores_raw_and_the_idle_daemon_compresses_it(store: Store, monkeypatch):
    """zstd would set the speed of a large write on two cores, so a batch with more queued
    behind it, or a large one whose data came fast or that someone waits for (fsync), is stored
    raw and its pack queued; a writer the flusher keeps up with (flushed by the timer) and a small fsync
    are compressed at once, with no rewrite later. Once idle, the daemon compresses the queued
    packs, and every byte reads back from its new place."""
    from cowfs.daemon import recompressor

    monkeypatch.setattr(recompressor, "QUIET_SECONDS", 0.05)
    tree = Tree(store, 1)
    sizes = {b"slow.csv": 6 * MiB, b"small.csv": 2 * MiB, b"burst.csv": 8 * MiB, b"synced.csv": 6 * MiB,
             b"fast.csv": 40 * MiB}
    files = {name: csv_text(size, seed) for seed, (name, size) in enumerate(sizes.items(), start=3)}
    inodes = {name: tree.create(ROOT_INODE, name, stat.S_IFREG | 0o644, 0, 0)[0] for name in files}
    pending: dict[bytes, list[int]] = {}
    added: dict[bytes, int] = {}  # stored bytes each write added
    stored: dict[str, int] = {}

    async def write(flusher: Flusher, name: bytes, piece: int, pause: float | None, hurry: bool) -> None:
        before = store.stats()["chunk_stored_bytes"]
        data = files[name]
        for start in range(0, len(data), piece):
            tree.write(inodes[name], start, data[start:start + piece])
            await flusher.throttle()  # as the daemon's write handler does
            if pause is not None:
                await trio.sleep(pause)
        await flusher.flush(durable=True, hurry=hurry)  # fsync, or the timer
        pending[name] = store.uncompressed_packs()
        added[name] = store.stats()["chunk_stored_bytes"] - before

    async def scenario() -> None:
        flusher = Flusher(tree)
        async with trio.open_nursery() as nursery:
            await nursery.start(flusher.run)
            await write(flusher, b"slow.csv", 256 * 1024, 0.02, hurry=False)  # ~12 MB/s
            await write(flusher, b"small.csv", 256 * 1024, None, hurry=True)
            await write(flusher, b"burst.csv", MiB, None, hurry=False)
            await write(flusher, b"synced.csv", 256 * 1024, 0.02, hurry=True)
            monkeypatch.setattr(flusher_module, "DIRTY_FLUSH_BYTES", 8 * MiB)
            await write(flusher, b"fast.csv", MiB, None, hurry=True)  # five batches queued before any seals
            stored["raw"] = store.stats()["chunk_stored_bytes"]
            nursery.start_soon(recompressor.Recompressor(flusher).run)
            with trio.fail_after(60):
                while store.uncompressed_packs():
                    await trio.sleep(0.05)
            stored["compressed"] = store.stats()["chunk_stored_bytes"]
            nursery.cancel_scope.cancel()

    trio.run(scenario)
    assert pending[b"slow.csv"] == [] and pending[b"small.csv"] == []
    assert added[b"slow.csv"] < sizes[b"slow.csv"] / 2 and added[b"small.csv"] < sizes[b"small.csv"] / 2
    assert pending[b"burst.csv"], "a large batch whose data came fast was compressed at once"
    for name in (b"burst.csv", b"synced.csv", b"fast.csv"):
        assert added[name] > 0.9 * sizes[name], f"{name.decode()} was compressed before the fsync returned"
    assert stored["compressed"] < stored["raw"] / 2
    store.chunk_cache.clear()
    for name, data in files.items():
        assert tree.read(inodes[name], 0, len(data)) == data
    from cowfs.fs.fsck import check
    assert check(store).clean


def test_compression_waits_while_the_mount_is_used_but_not_forever(store: Store):
    """The idle daemon compresses only after an interval without writes or FUSE requests (the
    user's imports and reads keep both cores), but requests alone, like a file browser polling
    every second, hold it back for PATIENCE_SECONDS at most; new writes start the wait again."""
    from trio.testing import MockClock

    from cowfs.daemon import recompressor

    tree = Tree(store, 1)
    requests = [0]
    waited: list[float] = []

    async def poll_every_second() -> None:
        while True:
            requests[0] += 1
            await trio.sleep(1)

    async def scenario() -> None:  # the clock starts at 0 and jumps while everyone sleeps
        flusher = Flusher(tree)
        waiting = recompressor.Recompressor(flusher, lambda: requests[0])
        await waiting._until_quiet()  # nothing going on: one interval
        waited.append(trio.current_time())
        with trio.fail_after(300):  # virtual seconds: a wait that never ends fails here
            async with trio.open_nursery() as nursery:
                nursery.start_soon(poll_every_second)
                await trio.sleep(0.5)
                await waiting._until_quiet()  # no write since 0
                waited.append(trio.current_time())
                flusher.submit(tree.take_batch() or Batch(epoch=0, blocks={}, attrs={}))  # a write
                await waiting._until_quiet()
                waited.append(trio.current_time())
                nursery.cancel_scope.cancel()

    trio.run(scenario, clock=MockClock(autojump_threshold=0))
    quiet, patience = recompressor.QUIET_SECONDS, recompressor.PATIENCE_SECONDS
    assert waited[0] <= quiet
    assert patience <= waited[1] <= patience + quiet
    assert waited[1] + patience <= waited[2] <= waited[1] + patience + quiet
