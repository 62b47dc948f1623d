"""Errors the engine raises, split by who must act on them."""

from __future__ import annotations

import errno as errno_codes
import os


class FsError(OSError):
    """A POSIX error for one filesystem request; the daemon hands its errno to the kernel."""

    def __init__(self, code: int, detail: str = "") -> None:
        super().__init__(code, detail or os.strerror(code))


class StoreError(Exception):
    """Something the user must fix (wrong store, unknown snapshot...); the message says what."""


class CorruptChunkError(FsError):
    """Stored bytes no longer match their hash: reported, never returned as data."""

    def __init__(self, detail: str) -> None:
        super().__init__(errno_codes.EIO, detail)


class RemoteChunkNeeded(Exception):
    """A block of a lazily mounted remote snapshot whose chunk is neither in the store nor in
    its cache yet. Not an error of the store: whoever can reach the remote fetches the chunk
    (off the request's thread) and asks again. ``ino`` and ``block`` say where it was needed,
    so the fetch can bring the blocks after it along."""

    def __init__(self, digest: bytes, where: object) -> None:
        super().__init__(f"chunk {digest.hex()[:16]} is on the remote, not here yet")
        self.digest = digest
        self.where = where  # a RemoteChunk
        self.ino: int | None = None
        self.block: int | None = None
