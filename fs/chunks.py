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
# Incompressible data (random bytes, parquet, images, pickled float arrays) costs zstd level 1
# as much time as text and gains nothing. A 4 KiB sample tells them apart for ~3% of a block's
# time; a block whose sample does not shrink goes through the fastest level instead (5-8x
# faster on such data). Either way the payload is an ordinary zstd frame.
SAMPLE = 4096
INCOMPRESSIBLE = 0.97  # a sample shrinking less than this is taken as noise
NOISE_LEVEL = -5
_local = threading.local()


@dataclass(frozen=True)
class SealedChunk:
    digest: bytes
    payload: bytes
    raw_len: int


def _codec() -> tuple[zstandard.ZstdCompressor, zstandard.ZstdDecompressor, zstandard.ZstdCompressor]:
    # zstd contexts are not thread-safe but are costly to build: one set per thread.
    codec = getattr(_local, "codec", None)
    if codec is None:
        codec = (zstandard.ZstdCompressor(level=COMPRESSION_LEVEL), zstandard.ZstdDecompressor(),
                 zstandard.ZstdCompressor(level=NOISE_LEVEL))
        _local.codec = codec
    return codec


def digest_of(data: bytes) -> bytes:
    return blake3.blake3(data).digest()


def _noisy(size: int, sample_compressed_len) -> bool:
    """Whether a block is taken as incompressible: large enough to sample, and its compressed
    sample (asked for only then) did not shrink."""
    return size >= 8 * SAMPLE and sample_compressed_len() > INCOMPRESSIBLE * SAMPLE


def seal(data: bytes | bytearray, digest: bytes | None = None) -> SealedChunk:
    """Compress (and hash, unless the caller already has the digest) without copying."""
    compressor, _, fast = _codec()
    if _noisy(len(data), lambda: len(compressor.compress(memoryview(data)[:SAMPLE]))):
        compressor = fast
    return SealedChunk(digest or digest_of(data), compressor.compress(data), len(data))


def seal_many(blocks: list[tuple[bytes, bytes | bytearray]], threads: int = 1) -> list[SealedChunk]:
    """Compress many hashed blocks (digest, data) in a few calls, each with the GIL released
    throughout (``threads`` > 1 adds zstd's own threads; the flusher already runs two callers).

    Why not ``seal`` in a loop: every call hands the GIL back and forth, and beside a busy FUSE
    thread each hand-back waits for the switch interval; sealing 64 MiB that way took 0.2-1.0 s
    instead of 0.03 s. Here a whole batch costs three calls: the 4 KiB samples, then the
    compressible blocks at the normal level and the noisy ones at the fastest."""
    if len(blocks) < 4:
        return [seal(data, digest) for digest, data in blocks]
    compressor, _, fast = _codec()
    samples = compressor.multi_compress_to_buffer([memoryview(data)[:SAMPLE] for _, data in blocks], threads=threads)
    noisy = [_noisy(len(data), lambda i=i: len(samples[i])) for i, (_, data) in enumerate(blocks)]
    sealed: list[SealedChunk | None] = [None] * len(blocks)
    for flag, chosen in ((False, compressor), (True, fast)):
        picked = [i for i, is_noisy in enumerate(noisy) if is_noisy == flag]
        if not picked:
            continue
        frames = chosen.multi_compress_to_buffer([blocks[i][1] for i in picked], threads=threads)
        for frame, i in zip(frames, picked):
            sealed[i] = SealedChunk(blocks[i][0], frame.tobytes(), len(blocks[i][1]))
    return sealed  # type: ignore[return-value]


def unseal(digest: bytes, payload: bytes, raw_len: int, where: str) -> bytes:
    """Decompress and prove the bytes are the ones that were written, or raise."""
    try:
        data = _codec()[1].decompress(payload, max_output_size=raw_len)
    except zstandard.ZstdError as exc:
        raise CorruptChunkError(f"chunk {digest.hex()[:16]} in {where} does not decompress: {exc}") from exc
    if len(data) != raw_len or digest_of(data) != digest:
        raise CorruptChunkError(f"chunk {digest.hex()[:16]} in {where} fails its hash check")
    return data
