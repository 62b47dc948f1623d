"""Moves dirty data from memory into the store without holding up the FUSE loop.

One flusher task per daemon commits batches strictly in the order they were taken (the
engine requires it). Hashing and compression run in worker threads, split in two so both
cores work. The index commit runs in a worker thread too: its fdatasync waits behind the
pack writeback for milliseconds to tens of them, during which the loop keeps serving FUSE
requests and snapshots (``Tree.write_batch`` says what may happen meanwhile), and the next
batch already taken is sealed.
"""

from __future__ import annotations

import errno
import logging
import math

import trio

from cowfs.daemon.memory import return_freed_memory
from cowfs.fs.store import Store
from cowfs.fs.tree import Batch, SealedBlocks, Tree, seal_blocks

log = logging.getLogger(__name__)

DIRTY_FLUSH_BYTES = 64 << 20  # start a background flush once writes brought this much data
# ... or once the dirty blocks hold this much: a write into part of a 128 KiB block fills the rest
# with what the block held before. Flushed at 64 MiB of such blocks, 20,000 random 4 KiB writes
# into a 256 MiB file read back and sealed again most blocks they touched (docs/benchmarks.md,
# session 15: 22.9k against 28.3k writes/s).
DIRTY_MEMORY_BYTES = 256 << 20
INFLIGHT_LIMIT_BYTES = 256 << 20  # writers wait while this much is being flushed
SEAL_SPLIT_MIN_BLOCKS = 8
# Dirty data behind a batch at or above which the batch is stored raw and compressed later, when
# the daemon is idle (fs/recompress.py): on two cores zstd would otherwise set the write speed.
BEHIND_BYTES = 16 << 20
# A batch this large is stored raw too when someone is in a hurry for it (fsync, a throttled
# writer, `cowfs snap`) or its data came faster than zstd keeps up with on the flusher's share of
# two cores. A writer the flusher keeps up with (pandas' to_csv, ~20-30 MB/s) is compressed as it
# goes, with no rewrite later; smaller batches are always compressed (a few ms).
LARGE_BATCH_BYTES = 4 << 20
FAST_WRITER_BYTES_PER_S = 100e6
# Freed block buffers stay in the heap this long after the last commit, so that the next write
# of a burst (a checkpoint saved at every cell, a loop writing files) does not fault its memory
# in again. 512 MiB written and fsynced 8 s apart: random bytes 733 -> 771 MB/s, text 518 -> 671
# (docs/benchmarks.md, session 20).
KEEP_FREED_SECONDS = 30.0


async def seal_in_threads(store: Store, batch: Batch, compress: bool = True) -> SealedBlocks:
    """Seal a batch in two worker threads: blake3, zstd and the pack writes all release the GIL."""
    store.ensure_pack_writer()
    items = list(batch.blocks.items())
    if len(items) < SEAL_SPLIT_MIN_BLOCKS:
        sealed = await trio.to_thread.run_sync(seal_blocks, store, batch.blocks, batch.hashed, compress)
    else:
        half = math.ceil(len(items) / 2)
        parts: list[SealedBlocks] = []

        async def seal_part(part: list) -> None:
            parts.append(await trio.to_thread.run_sync(seal_blocks, store, dict(part), batch.hashed, compress))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(seal_part, items[:half])
            nursery.start_soon(seal_part, items[half:])
        sealed = parts[0].merge(parts[1])
    # The commit must not reference unsynced pack bytes; fsync here, not on the trio thread.
    await trio.to_thread.run_sync(store.sync_packs)
    return sealed


class _SealAhead:
    """A batch's seal, started while the batch before it commits. In a sequential write the
    flusher is never idle, and each commit (6-16 ms per 64 MiB batch) used to stop the sealing:
    A/B of 512 MiB written and fsynced, 8 alternated reps, random bytes 640 -> 685 MB/s, text
    448 -> 467 (docs/benchmarks.md, session 18)."""

    def __init__(self, batch: Batch, pack: int | None) -> None:
        self.batch = batch
        self.pack = pack  # the open pack it appends to, and only to
        self.done = trio.Event()
        self.sealed: SealedBlocks | None = None  # None when it failed: sealed again in its turn


def error_code(exc: BaseException | None) -> int | None:
    """The errno a failed flush should report; both sealing threads may fail at once (ENOSPC),
    which reaches us as an exception group."""
    if isinstance(exc, BaseExceptionGroup):
        return next(filter(None, map(error_code, exc.exceptions)), None)
    return getattr(exc, "errno", None)


class Flusher:
    def __init__(self, tree: Tree) -> None:
        self.tree = tree
        self._send, self._receive = trio.open_memory_channel[Batch](math.inf)
        self._taken = 0  # batches handed to the worker
        self._taken_with_records = 0  # the last of them that lists snapshots
        self._listed = 0  # batches committed to the index, in order (their snapshots listed)
        self._committed = 0  # batches committed and, where they list snapshots, synced
        self._changed = trio.Event()
        self._retry_now = trio.Event()
        self._failures = 0
        self._rotate_requested = False
        self._last_commit_at = -math.inf  # trio clock
        self._last_trim_at = -math.inf
        self._pack_io = trio.Lock()  # held while threads append to or fsync this daemon's pack
        self._ahead: _SealAhead | None = None
        self._waiters = 0  # tasks in a hurry for a commit (fsync, throttled writers, snapshots)
        self._first_write_at: float | None = None  # of the data not taken yet (trio clock)
        self._arrived_fast: set[int] = set()  # id() of batches in flight whose data came fast
        self._nursery: trio.Nursery | None = None
        self.failure: BaseException | None = None

    # -- handing work over ---------------------------------------------------------------------
    def submit(self, batch: Batch) -> int:
        """Queue a batch already taken from the tree; returns its sequence number."""
        self._taken += 1
        if batch.records:
            self._taken_with_records = self._taken
        began, self._first_write_at = self._first_write_at, None
        if began is not None and batch.nbytes >= FAST_WRITER_BYTES_PER_S * (trio.current_time() - began):
            self._arrived_fast.add(id(batch))
        self._send.send_nowait(batch)
        return self._taken

    def kick(self) -> int:
        """Detach whatever is dirty now; returns the sequence number that covers it."""
        batch = self.tree.take_batch()
        return self.submit(batch) if batch is not None else self._taken

    def _failure_error(self) -> OSError:
        code = error_code(self.failure) or errno.EIO
        return OSError(code, f"flushing to the store failed: {self.failure}")

    async def wait_committed(self, sequence: int, hurry: bool = True) -> None:
        """Wait for a batch, and for the sync that makes the snapshots it lists durable; raise
        if an attempt to commit fails while we wait.

        A failing store is retried with backoff; a new waiter cuts the backoff short, so
        fsync after the disk has room again succeeds at once instead of reporting old news.
        Someone who ``hurry``s (anyone but the timer) has large batches stored raw meanwhile."""
        await self._wait_for(lambda: self._committed >= sequence, hurry)

    async def wait_listed(self, sequence: int) -> None:
        """Wait until a batch is in the index: the snapshots it carries are listed, not yet synced."""
        await self._wait_for(lambda: self._listed >= sequence)

    async def list_taken_snapshots(self) -> None:
        """Every snapshot taken so far is listed once this returns. Only a snapshot not yet in
        a batch starts one; data written since the last snapshot is not waited for."""
        if self.tree.unlisted:
            self.kick()
        await self.wait_listed(self._taken_with_records)

    async def _wait_for(self, reached, hurry: bool = True) -> None:
        failures_at_start = self._failures
        if self.failure is not None:
            self._retry_now.set()
        self._waiters += hurry
        try:
            while not reached():
                await self._changed.wait()
                if self._failures > failures_at_start:
                    raise self._failure_error()
        finally:
            self._waiters -= hurry

    async def flush(self, durable: bool, hurry: bool = True) -> None:
        """Everything written so far is in the store (and on disk when ``durable``)."""
        await self.wait_committed(self.kick(), hurry)
        if durable:
            await self._sync_store()

    async def throttle(self) -> None:
        """Called after a write: start a flush above the threshold, wait if far behind.

        While the store's disk is full, writes beyond the in-flight limit wait for the retry
        and fail with its error (ENOSPC), so memory stays bounded and the writer hears it."""
        if self._first_write_at is None:
            self._first_write_at = trio.current_time()
        if self.tree.dirty_written >= DIRTY_FLUSH_BYTES or self.tree.dirty_bytes >= DIRTY_MEMORY_BYTES:
            self.kick()
        while self.tree.inflight_bytes > INFLIGHT_LIMIT_BYTES:
            await self.wait_committed(self._committed + 1)

    async def rotate_pack(self) -> None:
        """Finish the pack this daemon appends to, so `cowfs gc` may rewrite or delete it.

        Threads use the pack while batches are sealed and while the store syncs (both under
        ``_pack_io``); it is closed at once if no batch is in flight, else after they commit."""
        self._rotate_requested = True
        await self._rotate_if_requested()

    async def _rotate_if_requested(self) -> None:
        async with self._pack_io:
            if self._rotate_requested and not self.tree.inflight:
                self._rotate_requested = False
                self.tree.store.close_pack()

    # -- the worker -------------------------------------------------------------------------------
    async def run(self, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Commit batches in order; make snapshots durable with one sync per group of batches
        that queued up meanwhile (group commit: per-cell snapshots arrive faster than fsync)."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            await self._commit_in_order()

    async def _commit_in_order(self) -> None:
        async for batch in self._receive:
            group = [batch]
            while True:
                try:
                    group.append(self._receive.receive_nowait())
                except trio.WouldBlock:
                    break
            async with self._pack_io:
                for member in group:
                    await self._until_done(f"flush of epoch {member.epoch}", self._commit, member)
                    self._listed += 1
                    self._wake()
            if any(member.records for member in group):
                await self._until_done("sync of the store", self._sync_store)
            self._committed += len(group)
            self._last_commit_at = trio.current_time()
            await self._rotate_if_requested()
            self._wake()

    async def _sync_store(self) -> None:
        """fsync packs, then the index, in a thread; the pack is not closed meanwhile."""
        async with self._pack_io:
            await trio.to_thread.run_sync(self.tree.store.sync)

    async def in_pack_thread(self, action, *args):
        """Run ``action`` in a worker thread while no batch appends to or rotates the pack (the
        recompressor's moves; a seal ahead may still run after the group that started it)."""
        async with self._pack_io:
            if self._ahead is not None:
                await self._ahead.done.wait()
            return await trio.to_thread.run_sync(action, *args)

    def _compress_now(self, batch: Batch) -> bool:
        """Whether to compress a batch as it is sealed, or store it raw and compress it when idle:
        raw when another batch is queued behind it, much is dirty behind it, or it is large and
        someone is in a hurry for it or its data came fast (the first batch of a large write
        has nothing behind it yet). Always compressed after a failure: a disk that filled up
        gets the smaller form when the commit is tried again."""
        if self.failure is not None:
            return True
        inflight = self.tree.inflight
        behind = bool(inflight) and inflight[-1] is not batch
        hurried = self._waiters > 0 or id(batch) in self._arrived_fast
        return not (behind or self.tree.dirty_bytes >= BEHIND_BYTES
                    or (hurried and batch.nbytes >= LARGE_BATCH_BYTES))

    @property
    def busy(self) -> bool:
        """Data is waiting to be flushed or being flushed."""
        return self.tree.has_dirty or bool(self.tree.inflight)

    @property
    def batches_taken(self) -> int:
        return self._taken

    async def _commit(self, batch: Batch) -> None:
        sealed = await self._sealed(batch)
        following = self.tree.inflight[1] if len(self.tree.inflight) > 1 else None
        store = self.tree.store
        if following is not None and self._ahead is None and self._nursery is not None and store.pack_has_room:
            self._ahead = _SealAhead(following, store.appending_pack)
            self._nursery.start_soon(self._seal_ahead, self._ahead)
        await trio.to_thread.run_sync(self.tree.write_batch, batch, sealed)
        self.tree.batch_committed(batch)
        self._arrived_fast.discard(id(batch))

    async def _sealed(self, batch: Batch) -> SealedBlocks:
        """The batch's chunks appended and durable, in a pack that is still open (locked).

        A seal made ahead is used only if its pack was not closed since: gc takes an unlocked
        pack as fully indexed. Else (a retry of an earlier batch, which may rotate the pack) it
        is dropped, and its records are left for gc."""
        ahead, self._ahead = self._ahead, None
        if ahead is not None:
            await ahead.done.wait()  # never two seals at once: a new one may rotate the pack
            if ahead.batch is batch and ahead.sealed is not None and self.tree.store.appending_pack == ahead.pack:
                return ahead.sealed
        return await seal_in_threads(self.tree.store, batch, self._compress_now(batch))

    async def _seal_ahead(self, ahead: _SealAhead) -> None:
        try:
            ahead.sealed = await seal_in_threads(self.tree.store, ahead.batch, self._compress_now(ahead.batch))
        except Exception as exc:  # sealed again in its own turn, which reports what still fails
            log.info("sealing epoch %s ahead failed: %s", ahead.batch.epoch, exc)
        finally:
            ahead.done.set()

    async def _until_done(self, what: str, action, *args) -> None:
        # A failed commit (disk full, say) leaves the batch in memory and in the engine's
        # in-flight list, so reads still see it; waiters hear the error; we retry until it lands.
        delay = 0.5
        while True:
            try:
                await action(*args)
            except Exception as exc:
                log.error("%s failed, will retry: %s", what, exc)
                self.failure = exc
                self._failures += 1
                self._wake()
                with trio.move_on_after(delay):
                    await self._retry_now.wait()
                self._retry_now = trio.Event()
                delay = min(delay * 2, 10.0)
                continue
            self.failure = None
            return

    def _wake(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def run_timer(self, interval: float = 5.0) -> None:
        """Bound how long data sits only in memory, and how long a commit waits for the disk;
        give freed memory back once no commit has come for ``KEEP_FREED_SECONDS``, and again
        every ``KEEP_FREED_SECONDS`` after that (glibc no longer trims by itself, and reads,
        listings and the idle compression free memory too)."""
        while True:
            await trio.sleep(interval)
            if self.tree.has_dirty:
                await self.flush(durable=True, hurry=False)
            else:
                await self._sync_store()
                now = trio.current_time()
                quiet_since = max(self._last_commit_at, self._last_trim_at)
                if not self.tree.inflight and now - quiet_since >= KEEP_FREED_SECONDS:
                    self._last_trim_at = now
                    await trio.to_thread.run_sync(return_freed_memory)
            self.tree.store.packs.drop_missing()
