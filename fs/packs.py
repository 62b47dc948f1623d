"""Pack files: append-only files of compressed chunks, one writer per process.

Record layout (docs/format.md): ``MAGIC | digest(32) | raw_len u32 | stored_len u32 | payload``.
The header repeats what the index knows so that packs alone can rebuild or check the index.
"""

from __future__ import annotations

import errno
import fcntl
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


class PackWriter:
    """Appends chunks to this process's current pack; ``sync`` makes them durable."""

    def __init__(self, directory: Path, pack_id: int) -> None:
        self.pack_id = pack_id
        self.path = pack_path(directory, pack_id)
        # A shared lock says "being appended to": gc never rewrites or deletes such a pack. The
        # pack is locked under a name gc does not list and only then given its own, so gc never
        # sees it unlocked and empty (and deletes it under the writer) between open and flock.
        hidden = self.path.with_name(f".{self.path.name}.new")
        self._fd = os.open(hidden, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, 0o600)
        fcntl.flock(self._fd, fcntl.LOCK_SH)
        os.rename(hidden, self.path)
        # The pack's name must be durable before any index entry that names it can be.
        sync_directory(directory)
        self.size = os.fstat(self._fd).st_size
        self._unsynced = False
        self._lock = threading.Lock()  # the flusher's worker threads append side by side

    def append(self, chunk: SealedChunk) -> ChunkLocation:
        return self.append_many([chunk])[0]

    def append_many(self, chunks: list[SealedChunk]) -> list[ChunkLocation]:
        """Append records RECORDS_PER_WRITE at a time: a call per record hands the GIL over too
        often beside a busy FUSE thread, and much larger writes copy slower (on the VM measured)."""
        locations = []
        with self._lock:
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
        try:
            written = os.writev(self._fd, parts)
        except OSError:
            os.ftruncate(self._fd, self.size)
            raise
        if written != offset - self.size:
            # A short write to a file means the disk filled up. Cut the torn records off so
            # the pack stays a clean sequence of records for the next append and for fsck.
            os.ftruncate(self._fd, self.size)
            raise OSError(errno.ENOSPC, f"no space left for {self.path}")
        self.size = offset
        self._unsynced = True
        return locations

    @property
    def full(self) -> bool:
        return self.size >= PACK_ROTATE_BYTES

    def sync(self) -> None:
        if self._unsynced:
            os.fsync(self._fd)
            self._unsynced = False

    def close(self) -> None:
        self.sync()
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
