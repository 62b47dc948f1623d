"""Fetching the chunks of a lazily mounted remote snapshot while requests wait for them.

A request that meets a chunk the store lacks (``RemoteChunkNeeded``) waits here while a worker
thread fetches it, with the blocks after it in the same file, in ranged GETs; then the request
runs again. A chunk already on its way is waited for, not fetched twice. Reads that move
forward through a file start the next window in the background before they reach it, so a
sequential read rarely waits for the network. Only this module's threads touch the network:
never the FUSE thread.
"""

from __future__ import annotations

import errno
import logging
from typing import Any

import pyfuse3
import trio

from cowfs.fs.errors import CorruptChunkError, RemoteChunkNeeded, StoreError
from cowfs.fs.records import RemoteChunk
from cowfs.fs.remote.bucket import load_remotes
from cowfs.fs.remote.lazy import Buckets, download
from cowfs.fs.tree import BLOCK_SIZE, Tree

log = logging.getLogger(__name__)
WAIT_WINDOW = 8  # blocks fetched with the one a request waits for (1 MiB): a quick first byte
FIRST_AHEAD = 32  # blocks of the first background window (4 MiB); each next one is twice as
MAX_AHEAD = 128  # large, up to 16 MiB (a pack): fewer, larger GETs once a file is read in order
AHEAD_AT_ONCE = 2  # background GETs in flight at once


class RemoteReads:
    def __init__(self, tree: Tree) -> None:
        self.tree = tree
        self.store = tree.store
        self.buckets = Buckets(self.store)
        self.active = self.store.has_remote_chunks()
        self.arriving: dict[bytes, trio.Event] = {}
        self.fetched_up_to: dict[int, int] = {}  # per file: blocks below this were asked for
        self.windows: dict[int, int] = {}  # per file: blocks the next read-ahead asks for
        self.ahead_slots = trio.CapacityLimiter(AHEAD_AT_ONCE)
        self._nursery: trio.Nursery | None = None

    async def run(self, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Own the nursery the background read-aheads run in, for the daemon's lifetime."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            if self.active:  # making a client costs ~0.3 s: not on the first read's time
                await trio.to_thread.run_sync(self._connect)
            await trio.sleep_forever()

    def _connect(self) -> None:
        for name in load_remotes(self.store):
            try:
                self.buckets[name]  # noqa: B018 -- made on first use
            except StoreError as exc:  # the read that needs it will say
                log.warning("remote %s: %s", name, exc)

    def _wanted(self, ino: int, first: int, count: int) -> list[tuple[bytes, RemoteChunk]]:
        """Blocks of a file from ``first`` whose chunks are on the remote only, not on their way."""
        found: dict[bytes, RemoteChunk] = {}
        with self.store.index.reading() as txn:
            for _, digest in self.tree.blocks_from(ino, first, count):
                if digest in self.arriving or digest in found or self.store.has_chunk(txn, digest):
                    continue
                where = self.store.remote_chunk(txn, digest)
                if where is not None and not self.store.remote_cache(where.remote).has(digest):
                    found[digest] = where
        return list(found.items())

    async def fetch(self, needed: RemoteChunkNeeded, request: str) -> None:
        """Bring the chunk a request needs (and the blocks after it); EIO with a logged reason
        when the remote cannot give it intact."""
        on_its_way = self.arriving.get(needed.digest)
        if on_its_way is not None:
            await on_its_way.wait()
            return
        wanted = [(needed.digest, needed.where)]
        if needed.ino is not None and needed.block is not None:
            wanted += [item for item in self._wanted(needed.ino, needed.block + 1, WAIT_WINDOW - 1)
                       if item[0] != needed.digest]
            self._advance(needed.ino, needed.block + WAIT_WINDOW)
        try:
            data = await self._download(wanted, needed.digest, self._claim(wanted))
        except (StoreError, CorruptChunkError, OSError) as exc:
            reason = exc.strerror if isinstance(exc, CorruptChunkError) else str(exc)
            log.error("I/O error in %s%s: chunk %s could not be fetched from remote %s: %s", request,
                      self.tree_place(needed), needed.digest.hex()[:16], needed.where.remote, reason)
            raise pyfuse3.FUSEError(errno.EIO) from exc
        if data is not None:
            self.store.chunk_cache.put(needed.digest, data)

    def tree_place(self, needed: RemoteChunkNeeded) -> str:
        return "" if needed.ino is None else f" (inode {needed.ino}, block {needed.block})"

    def _claim(self, wanted: list[tuple[bytes, RemoteChunk]]) -> dict[bytes, trio.Event]:
        """Mark chunks as on their way, at once, so no other request fetches them too."""
        events = {digest: trio.Event() for digest, _ in wanted}
        self.arriving.update(events)
        return events

    async def _download(self, wanted: list[tuple[bytes, RemoteChunk]], needed: bytes | None,
                        events: dict[bytes, trio.Event]) -> bytes | None:
        try:
            # abandon_on_cancel: a GET stuck on a dead network must not hold up an unmount;
            # whatever it still writes is a complete, verified cache file or nothing.
            return await trio.to_thread.run_sync(download, self.store, self.buckets, wanted, needed,
                                                 abandon_on_cancel=True)
        finally:
            for digest, event in events.items():
                del self.arriving[digest]
                event.set()

    def _advance(self, ino: int, up_to: int) -> None:
        self.fetched_up_to[ino] = max(self.fetched_up_to.get(ino, 0), up_to)

    def after_read(self, ino: int, end: int) -> None:
        """A read of a file ended at byte ``end``: keep AHEAD_AT_ONCE windows fetching ahead."""
        if not self.active or self._nursery is None:
            return
        block = end // BLOCK_SIZE
        window = self.windows.get(ino, FIRST_AHEAD)
        while self.fetched_up_to.get(ino, 0) <= block + window * AHEAD_AT_ONCE:
            first = max(self.fetched_up_to.get(ino, 0), block + 1)
            self._advance(ino, first + window)
            wanted = self._wanted(ino, first, window)
            if not wanted and not self.tree.blocks_from(ino, first, 1):
                return  # past the end of the file
            if wanted:
                self._nursery.start_soon(self._read_ahead, wanted, self._claim(wanted))
            window = self.windows[ino] = min(window * 2, MAX_AHEAD)

    async def _read_ahead(self, wanted: list[tuple[bytes, RemoteChunk]], events: dict[bytes, trio.Event]) -> None:
        async with self.ahead_slots:
            try:
                await self._download(wanted, None, events)
            except (StoreError, CorruptChunkError, OSError) as exc:  # a read that needs it will say
                log.warning("read-ahead from the remote failed: %s", exc)

    def forget(self, ino: int) -> None:
        self.fetched_up_to.pop(ino, None)
        self.windows.pop(ino, None)
