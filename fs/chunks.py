"""Content addressing: a chunk is named by the blake3 hash of its raw bytes and stored
compressed with zstd. Both libraries release the GIL, so callers may run these in threads."""

from __future__ import annotations

import threading
from dataclasses import dataclass

import blake3
import zstandard

from cowfs.fs.errors import CorruptChunkError

HASH_LEN = 32
COMPRESSION_LEVEL = 1  # faster than 3 and no worse on CSV-like data (bench/run.py figures)
_local = threading.local()


@dataclass(frozen=True)
class SealedChunk:
    digest: bytes
    payload: bytes
    raw_len: int


def _codec() -> tuple[zstandard.ZstdCompressor, zstandard.ZstdDecompressor]:
    # zstd contexts are not thread-safe but are costly to build: one pair per thread.
    codec = getattr(_local, "codec", None)
    if codec is None:
        codec = (zstandard.ZstdCompressor(level=COMPRESSION_LEVEL), zstandard.ZstdDecompressor())
        _local.codec = codec
    return codec


def digest_of(data: bytes) -> bytes:
    return blake3.blake3(data).digest()


def seal(data: bytes | bytearray, digest: bytes | None = None) -> SealedChunk:
    """Compress (and hash, unless the caller already has the digest) without copying."""
    return SealedChunk(digest or digest_of(data), _codec()[0].compress(data), len(data))


def unseal(digest: bytes, payload: bytes, raw_len: int, where: str) -> bytes:
    """Decompress and prove the bytes are the ones that were written, or raise."""
    try:
        data = _codec()[1].decompress(payload, max_output_size=raw_len)
    except zstandard.ZstdError as exc:
        raise CorruptChunkError(f"chunk {digest.hex()[:16]} in {where} does not decompress: {exc}") from exc
    if len(data) != raw_len or digest_of(data) != digest:
        raise CorruptChunkError(f"chunk {digest.hex()[:16]} in {where} fails its hash check")
    return data
