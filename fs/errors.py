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
