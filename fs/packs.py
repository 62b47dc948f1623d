"""Pack files: append-only files of compressed chunks, one writer per process.

Record layout (docs/format.md): ``MAGIC | digest(32) | raw_len u32 | stored_len u32 | payload``.
The header repeats what the index knows so that packs alone can rebuild or check the index.
"""

from __future__ import annotations

import errno
import fcntl
import mmap
import os
import struct
import threading
from pathlib import Path

from cowfs.fs.chunks import HASH_LEN, SealedChunk
from cowfs.fs.errors import CorruptChunkError
from cowfs.fs.records import ChunkLocation

MAGIC = b"CWC1"
HEADER = struct.Struct(f">4s{HASH_LEN}sII")
PACK_ROTATE_BYTES = 128 * 1024 * 1024  # smaller packs let gc reclaim space sooner


def pack_path(directory: Path, pack_id: int) -> Path:
    return directory / f"{pack_id:08d}.pack"


class PackMissingError(CorruptChunkError):
    """The index names a pack file that is not there (gc moved it, or the store is damaged)."""


def sync_directory(path: Path) -> None:
    """Make the names in a directory durable: a file fsynced in a directory whose own entry
    was never synced can vanish in a machine crash."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def pack_in_use(path: Path) -> bool:
    """Whether some process is appending to this pack (it holds the shared lock)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


RECORDS_PER_WRITE = 16  # about 2 MiB a call: much larger writes copy slower (32 MiB: 5x)
# Whole blocks of a pack go to the disk with O_DIRECT, past the page cache. On this project's VM a
# copy into page-cache pages the kernel has just allocated runs at 0.35-4 GB/s from one minute to
# the next (the host backs each new page on first touch), and perf put 68% of the daemon's time
# during a sequential write in that copy; 512 MiB written with O_DIRECT from a reused buffer took
# 0.30-0.41 s, the same written through the page cache and fsynced 0.35-1.63 s. The packs were
# never read from the page cache much anyway: the mount's own cache holds the file's bytes.
DIRECT_ALIGN = 4096  # offsets, lengths and buffer addresses: a multiple of any disk's logical block
STAGE_BYTES = 8 << 20  # records are gathered here (page-aligned memory) and written whole blocks at a time


class _DirectStage:
    """Gathers a pack's newest bytes in aligned memory and writes them whole blocks at a time
    through an O_DIRECT descriptor; the last partial block goes through the page cache at a sync.

    The pack file is a clean sequence of records at every sync: the partial block is written to
    its exact length, and rewritten, longer, by the next direct write that covers it (the kernel
    writes such a cached page back before a direct write over it, so readers never see stale
    bytes)."""

    def __init__(self, direct_fd: int, buffered_fd: int) -> None:
        self.direct_fd = direct_fd
        self.buffered_fd = buffered_fd
        self.direct = True  # until the filesystem refuses a direct write it accepted at open
        self.memory = mmap.mmap(-1, STAGE_BYTES)
        self.start = 0  # file offset of memory[0], always a multiple of DIRECT_ALIGN
        self.length = 0  # bytes gathered; the pack's records end at start + length

    def add(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data)
        while view:
            room = STAGE_BYTES - self.length
            if not room:
                self._write_blocks()
                continue
            taken = view[:room]
            self.memory[self.length:self.length + len(taken)] = taken
            self.length += len(taken)
            view = view[len(taken):]

    def write_out(self) -> None:
        """Everything gathered is in the file (not yet durable: the caller fsyncs)."""
        self._write_blocks()
        if self.length:
            with self._gathered(self.length) as tail:
                _write_fully(self.buffered_fd, [tail], self.start)

    def mark(self) -> tuple[int, int, bytes]:
        """What ``undo`` needs to forget everything added after this point: where the gathered
        bytes start and end, and the last partial block, should a write move them on meanwhile."""
        end = self.start + self.length
        return self.start, self.length, bytes(self.memory[end - end % DIRECT_ALIGN - self.start:self.length])

    def undo(self, mark: tuple[int, int, bytes]) -> None:
        start, length, tail = mark
        if self.start == start:  # nothing written since: the bytes gathered then are still here
            self.length = length
            return
        # A write since then took every whole block up to the mark's end to the file.
        self.start = start + length - len(tail)
        self.memory[:len(tail)] = tail
        self.length = len(tail)

    def close(self) -> None:
        os.close(self.direct_fd)
        self.memory.close()

    def _gathered(self, length: int) -> memoryview:
        """A view of the first ``length`` bytes gathered, to use in a ``with``: a view still
        alive (in an error's traceback, say) would stop the buffer from ever being closed."""
        return memoryview(self.memory)[:length]

    def _write_blocks(self) -> None:
        whole = self.length - self.length % DIRECT_ALIGN
        if not whole:
            return
        with self._gathered(whole) as blocks:
            try:
                _write_fully(self.direct_fd if self.direct else self.buffered_fd, [blocks], self.start)
            except OSError as exc:
                if exc.errno != errno.EINVAL or not self.direct:
                    raise
                self.direct = False
                _write_fully(self.buffered_fd, [blocks], self.start)
        kept = self.length - whole
        self.memory[:kept] = self.memory[whole:self.length]
        self.start += whole
        self.length = kept


def _write_fully(fd: int, parts: list, offset: int) -> None:
    """A short write to a file means the disk filled up."""
    if os.pwritev(fd, parts, offset) != sum(map(len, parts)):
        raise OSError(errno.ENOSPC, "no space left on the store's disk")


def _open_direct(path: Path) -> int | None:
    """A second descriptor of the pack that bypasses the page cache, where the filesystem allows
    it (older tmpfs and some FUSE filesystems refuse it: their packs go through the page cache)."""
    try:
        return os.open(path, os.O_WRONLY | os.O_DIRECT | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno == errno.EINVAL:
            return None
        raise


class PackWriter:
    """Appends chunks to this process's current pack; ``sync`` makes them durable."""

    def __init__(self, directory: Path, pack_id: int) -> None:
        self.pack_id = pack_id
        self.path = pack_path(directory, pack_id)
        # A shared lock says "being appended to": gc never rewrites or deletes such a pack. The
        # pack is locked under a name gc does not list and only then given its own, so gc never
        # sees it unlocked and empty (and deletes it under the writer) between open and flock.
        hidden = self.path.with_name(f".{self.path.name}.new")
        self._fd = os.open(hidden, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        fcntl.flock(self._fd, fcntl.LOCK_SH)
        os.rename(hidden, self.path)
        # The pack's name must be durable before any index entry that names it can be.
        sync_directory(directory)
        self.size = 0
        direct_fd = _open_direct(self.path)
        self._stage = _DirectStage(direct_fd, self._fd) if direct_fd is not None else None
        self._unsynced = False
        self._closed = False
        self._lock = threading.Lock()  # the flusher's worker threads append side by side

    def append(self, chunk: SealedChunk) -> ChunkLocation:
        return self.append_many([chunk])[0]

    def append_many(self, chunks: list[SealedChunk]) -> list[ChunkLocation]:
        """Append records RECORDS_PER_WRITE at a time: a call per record hands the GIL over too
        often beside a busy FUSE thread, and much larger writes copy slower (on the VM measured)."""
        locations = []
        with self._lock:
            if self._closed:  # never a write to a descriptor number that may name another file now
                raise OSError(errno.EBADF, f"pack {self.pack_id} was closed while chunks were being appended")
            for first in range(0, len(chunks), RECORDS_PER_WRITE):
                locations += self._append(chunks[first:first + RECORDS_PER_WRITE])
        return locations

    def _append(self, chunks: list[SealedChunk]) -> list[ChunkLocation]:
        parts, locations, offset = [], [], self.size
        for chunk in chunks:
            header = record_header(chunk.digest, chunk.raw_len, len(chunk.payload))
            parts += [header, chunk.payload]
            locations.append(ChunkLocation(self.pack_id, offset + len(header), len(chunk.payload), chunk.raw_len))
            offset += len(header) + len(chunk.payload)
        mark = self._stage.mark() if self._stage is not None else None
        try:
            if self._stage is not None:
                for part in parts:
                    self._stage.add(part)
            else:
                _write_fully(self._fd, parts, self.size)
        except OSError:
            # Cut the torn records off so the pack stays a clean sequence of records for the
            # next append and for fsck.
            if mark is not None:
                self._stage.undo(mark)
            os.ftruncate(self._fd, self.size)
            raise
        self.size = offset
        self._unsynced = True
        return locations

    @property
    def full(self) -> bool:
        return self.size >= PACK_ROTATE_BYTES

    def sync(self) -> None:
        with self._lock:
            self._sync()

    def _sync(self) -> None:
        if self._unsynced:
            if self._stage is not None:
                self._stage.write_out()
            os.fsync(self._fd)
            self._unsynced = False

    def close(self) -> None:
        """Sync and close; appends that come later (a flusher thread sealing the next batch
        ahead) fail rather than write anywhere."""
        with self._lock:
            if self._closed:
                return
            self._sync()
            self._closed = True
            if self._stage is not None:
                self._stage.close()
            os.close(self._fd)


def record_header(digest: bytes, raw_len: int, stored_len: int) -> bytes:
    return HEADER.pack(MAGIC, digest, raw_len, stored_len)


def rewrite_header(directory: Path, location: ChunkLocation, header: bytes) -> None:
    """fsck --repair only: put back a record header from what the index and the (verified)
    payload prove it was. The payload and every other byte of the pack stay as they are."""
    fd = os.open(pack_path(directory, location.pack), os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        os.pwrite(fd, header, location.offset - HEADER.size)
        os.fsync(fd)
    finally:
        os.close(fd)


class PackReader:
    """Reads payloads by location, keeping one descriptor per pack open."""

    def __init__(self, directory: Path) -> None:
        self._directory = directory
        self._fds: dict[int, int] = {}

    def forget(self, pack_id: int) -> None:
        """Close our descriptor of a pack that gc has removed."""
        fd = self._fds.pop(pack_id, None)
        if fd is not None:
            os.close(fd)

    def header(self, location: ChunkLocation) -> bytes:
        """The record header in front of a payload (what rebuilding or repairing goes by)."""
        return os.pread(self._fd(location.pack), HEADER.size, location.offset - HEADER.size)

    def read(self, location: ChunkLocation) -> bytes:
        """Safe in any thread once the pack is ``open``."""
        payload = os.pread(self._fd(location.pack), location.stored_len, location.offset)
        if len(payload) != location.stored_len:
            raise CorruptChunkError(f"pack {location.pack} is shorter than the index says")
        return payload

    def open(self, pack_id: int) -> None:
        """Open a pack for reading, here, so that threads may then read it."""
        self._fd(pack_id)

    def _fd(self, pack_id: int) -> int:
        fd = self._fds.get(pack_id)
        if fd is None:
            try:
                fd = os.open(pack_path(self._directory, pack_id), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            except FileNotFoundError as exc:
                raise PackMissingError(f"pack {pack_id} is missing from the store") from exc
            self._fds[pack_id] = fd
        return fd

    def drop_missing(self) -> None:
        """Close descriptors of packs that gc deleted, so their disk space really comes back."""
        for pack_id in [p for p in self._fds if not pack_path(self._directory, p).exists()]:
            self.forget(pack_id)

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()


def scan_pack(path: Path):
    """Yield ``(digest, raw_len, payload_offset, stored_len)`` for each record; stops at a torn tail."""
    with open(path, "rb") as pack:
        offset = 0
        while True:
            header = pack.read(HEADER.size)
            if len(header) < HEADER.size:
                return
            magic, digest, raw_len, stored_len = HEADER.unpack(header)
            if magic != MAGIC:
                return
            yield digest, raw_len, offset + HEADER.size, stored_len
            offset += HEADER.size + stored_len
            pack.seek(offset)
