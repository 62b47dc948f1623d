"""The local copy of remote chunks a lazily mounted snapshot has read, with a hard size limit.

A chunk is kept as it came (compressed, one file named by its digest) and is verified again at
every read, so a damaged cache file is dropped and fetched again, never served. The limit holds
after every ``put``: the least recently read files go first. Several daemons may share one
cache directory; each counts what is on disk before it evicts, so none can push it past the
limit for long.
"""

from __future__ import annotations

import os
import threading
import uuid
from pathlib import Path

DEFAULT_LIMIT = 4 << 30
MINIMUM_LIMIT = 16 << 20  # room for a read-ahead window and the chunk a read waits for
EVICT_TO = 0.9  # evict a little more than needed, so a full cache is not scanned at every put


class ChunkCache:
    def __init__(self, directory: Path, limit: int = DEFAULT_LIMIT) -> None:
        self.directory = directory
        self.limit = max(limit, MINIMUM_LIMIT)
        self._size: int | None = None  # bytes on disk, counted at the first put
        self._lock = threading.Lock()  # puts come from worker threads

    def _path(self, digest: bytes) -> Path:
        name = digest.hex()
        return self.directory / name[:2] / name

    def get(self, digest: bytes) -> bytes | None:
        path = self._path(digest)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        with os.fdopen(fd, "rb") as handle:
            payload = handle.read()
        try:
            os.utime(path)  # recently read: the last to be evicted
        except FileNotFoundError:
            pass
        return payload

    def has(self, digest: bytes) -> bool:
        return self._path(digest).exists()

    def discard(self, digest: bytes) -> None:
        path = self._path(digest)
        with self._lock:
            try:
                size = path.stat().st_size
                path.unlink()
            except FileNotFoundError:
                return
            if self._size is not None:
                self._size -= size

    def put(self, digest: bytes, payload: bytes) -> None:
        path = self._path(digest)
        with self._lock:
            self._make_room(len(payload))
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}")
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            with os.fdopen(fd, "wb") as handle:
                handle.write(payload)
            os.replace(temporary, path)  # a reader sees the whole chunk or none (no fsync: a cache)
            assert self._size is not None
            self._size += len(payload)

    def size(self) -> int:
        return sum(size for _, size, _ in self._files())

    def _files(self) -> list[tuple[float, int, Path]]:
        found = []
        for sub in os.scandir(self.directory) if self.directory.is_dir() else ():
            if not sub.is_dir(follow_symlinks=False):
                continue
            for entry in os.scandir(sub.path):
                try:
                    info = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                found.append((info.st_mtime, info.st_size, Path(entry.path)))
        return found

    def _make_room(self, incoming: int) -> None:
        if self._size is not None and self._size + incoming <= self.limit:
            return
        files = sorted(self._files())
        total = sum(size for _, size, _ in files)
        if total + incoming > self.limit:
            goal = EVICT_TO * self.limit - incoming
            for _, size, path in files:
                if total <= goal:
                    break
                try:
                    path.unlink()
                except FileNotFoundError:
                    pass
                total -= size
        self._size = total
