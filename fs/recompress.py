"""Compressing later what the flusher stored raw to keep up, and moving chunks between packs.

Why later: on two cores zstd sets the speed of a large write once the rest of the path keeps up.
512 MiB of never-seen text written and fsynced ran at 433 MB/s compressed and 704 MB/s stored
raw, 6 alternated reps (docs/benchmarks.md, session 19). So while more data waits behind a
batch the flusher stores it raw and records its pack (``uncompressed_packs``); once the daemon
is idle, or at `cowfs gc`, its live raw chunks are read and verified, those zstd shrinks
compressed, appended to the current pack, their index entries switched where they
still point at the old place, and the old pack deleted once nothing in it is live. These are
gc's rules for moving a pack (docs/write-path.md); gc moves its packs with the same functions,
and compresses raw chunks a stopped daemon left behind.
"""

from __future__ import annotations

import errno
import fcntl
import os
from dataclasses import dataclass
from typing import Callable, Iterator

import lmdb

from cowfs.fs.chunks import SealedChunk, seal_many
from cowfs.fs.keys import DB_CHUNKS, DB_META
from cowfs.fs.packs import pack_path, scan_pack
from cowfs.fs.records import ChunkLocation
from cowfs.fs.store import Store, bump_stat, unseal_stored

SLICE_BYTES = 8 << 20  # chunks moved per index switch: a few ms of a writer's wait, not seconds
REWRITE_BELOW_LIVE_RATIO = 0.5  # a pack with less of its size live is emptied into a new one


@dataclass(frozen=True)
class Moving:
    """A chunk read from its old place, ready to be appended at a new one."""

    digest: bytes
    old: ChunkLocation
    chunk: SealedChunk


class PackBusy(Exception):
    """Someone appends to the pack, or is already moving it: leave it to them."""


def resealed(entries: list[tuple[bytes, ChunkLocation]], read: Callable[[ChunkLocation], bytes],
             compress: bool = True) -> list[Moving]:
    """Read and verify each chunk (raises CorruptChunkError), compressing those stored raw that
    zstd shrinks (unless ``compress`` is false); a frame is moved as it is. CPU work with the
    GIL released: run it in a thread."""
    moving: list[Moving] = []
    raw: list[tuple[bytes, ChunkLocation, bytes]] = []
    for digest, location in entries:
        payload = read(location)
        data = unseal_stored(digest, payload, location)
        if compress and location.stored_len == location.raw_len:
            raw.append((digest, location, data))
        else:
            moving.append(Moving(digest, location, SealedChunk(digest, payload, location.raw_len)))
    sealed = seal_many([(digest, data) for digest, _, data in raw])
    moving += [Moving(digest, location, chunk) for (digest, location, _), chunk in zip(raw, sealed)]
    return moving


def shrunk(entries: list[tuple[bytes, ChunkLocation]], read: Callable[[ChunkLocation], bytes]) -> list[Moving]:
    """The chunks stored raw that zstd shrinks, compressed: the only ones worth moving to
    compress a pack. Frames and noise stay where they are unless the pack ends up mostly dead
    (``PackRewrite.steps``), so a few MiB stored raw never cost a rewrite of a 128 MiB pack."""
    raw = [(digest, location) for digest, location in entries if location.stored_len == location.raw_len]
    return [m for m in resealed(raw, read) if len(m.chunk.payload) < m.old.stored_len]


def relocate(store: Store, moving: list[Moving]) -> int:
    """Append the chunks to this process's pack, make them durable, then point the index at
    them where it still points at the old place (a chunk gc deleted or moved meanwhile stays as
    the index says). Returns the stored bytes this saved. The caller owns the pack writer."""
    if not moving:
        return 0
    store.ensure_pack_writer()
    locations = store.append_chunks([m.chunk for m in moving])
    store.sync_packs()
    chunks, meta = store.index.db(DB_CHUNKS), store.index.db(DB_META)

    def switch(txn: lmdb.Transaction) -> int:
        saved = 0
        for m, new in zip(moving, locations):
            raw = txn.get(m.digest, db=chunks)
            if raw is not None and ChunkLocation.decode(raw) == m.old:
                txn.put(m.digest, new.encode(), db=chunks)
                saved += m.old.stored_len - new.stored_len
        if saved:
            bump_stat(txn, meta, b"chunk_stored_bytes", -saved)
        return saved

    return store.index.write(switch)


def slices(entries: list[tuple[bytes, ChunkLocation]], limit: int = SLICE_BYTES) -> Iterator[list]:
    """Consecutive runs of entries of about ``limit`` stored bytes each."""
    run: list[tuple[bytes, ChunkLocation]] = []
    size = 0
    for entry in entries:
        run.append(entry)
        size += entry[1].stored_len
        if size >= limit:
            yield run
            run, size = [], 0
    if run:
        yield run


class PackRewrite:
    """One finished pack being emptied into the current one. It is held open and under an
    exclusive lock throughout, so gc and other daemons see it in use and leave it alone, and
    its bytes stay readable even if it is deleted by someone who listed it before we locked."""

    def __init__(self, store: Store, pack_id: int) -> None:
        self.store = store
        self.pack_id = pack_id
        self.path = pack_path(store.path / "packs", pack_id)
        self._fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)  # FileNotFoundError: gone
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            os.close(self._fd)
            raise PackBusy(f"pack {pack_id} is in use") from exc

    def live_chunks(self) -> list[tuple[bytes, ChunkLocation]]:
        """The records the index still points at, in pack order."""
        records = list(scan_pack(self.path))
        table = self.store.index.db(DB_CHUNKS)
        live = []
        with self.store.index.reading() as txn:
            for digest, raw_len, offset, stored_len in records:
                location = ChunkLocation(self.pack_id, offset, stored_len, raw_len)
                raw = txn.get(digest, db=table)
                if raw is not None and ChunkLocation.decode(raw) == location:
                    live.append((digest, location))
        return live

    def steps(self) -> Iterator[tuple[list[tuple[bytes, ChunkLocation]], bool]]:
        """Slices of live chunks to move, each with whether only those that shrink move: first
        the whole pack that way; then, if what is left live is less than half the pack, the rest
        as it is, so the pack can go. Lazy: each slice's chunks are moved before the next is
        chosen (the caller relocates them in between)."""
        for part in slices(self.live_chunks()):
            yield part, True
        left = self.live_chunks()
        if sum(location.stored_len for _, location in left) < REWRITE_BELOW_LIVE_RATIO * self.path.stat().st_size:
            for part in slices(left):
                yield part, False

    def moving(self, part: list[tuple[bytes, ChunkLocation]], only_shrinking: bool) -> list[Moving]:
        """What ``relocate`` should move of one slice (CPU work: run it in a thread)."""
        return shrunk(part, self.read) if only_shrinking else resealed(part, self.read, compress=False)

    def read(self, location: ChunkLocation) -> bytes:
        payload = os.pread(self._fd, location.stored_len, location.offset)
        if len(payload) != location.stored_len:
            raise OSError(errno.EIO, f"pack {self.pack_id} is shorter than the index says")
        return payload

    def finish(self) -> bool:
        """Forget the pack was to be compressed, and delete it if the index no longer points
        into it (a pack still mostly live stays as it is, as gc would leave it). The switches
        are made durable first, or a crash could bring back an index that points into the
        deleted pack. Returns whether the pack was deleted."""
        self.store.sync()
        live = self.live_chunks()
        if not live:
            self.path.unlink(missing_ok=True)  # a daemon's readers drop their descriptor later (drop_missing)
        self.store.forget_uncompressed(self.pack_id)
        return not live

    def close(self) -> None:
        os.close(self._fd)

    def __enter__(self) -> "PackRewrite":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def compress_pack(store: Store, pack_id: int) -> int:
    """Rewrite one pack that holds chunks stored raw (single-threaded callers: gc, tests).
    Returns the stored bytes saved; raises PackBusy if someone holds the pack."""
    try:
        rewrite = PackRewrite(store, pack_id)
    except FileNotFoundError:
        store.forget_uncompressed(pack_id)  # deleted by gc after the switches were made
        return 0
    with rewrite:
        saved = sum(relocate(store, rewrite.moving(*step)) for step in rewrite.steps())
        if rewrite.finish():
            store.packs.forget(pack_id)
        return saved
