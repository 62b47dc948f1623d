"""Content addressing: a chunk is named by the blake3 hash of its raw bytes and stored
compressed with zstd, or raw where zstd would not shrink it. Both libraries release the GIL, so
callers may run these in threads."""

from __future__ import annotations

import threading
from dataclasses import dataclass

import blake3
import zstandard

from cowfs.fs.errors import CorruptChunkError

HASH_LEN = 32
COMPRESSION_LEVEL = 1  # faster than 3 and no worse on CSV-like data (bench/run.py figures)
# Incompressible data (random bytes, parquet, images, pickled float arrays) costs zstd as much
# time as text and gains nothing. A 4 KiB sample tells them apart for ~3% of a block's time; a
# block whose sample does not shrink is stored raw. A payload as long as its chunk is always the
# raw bytes (a frame is kept only when it is shorter), so readers need no flag (docs/format.md).
# Storing such blocks raw took a 1 GiB write of random bytes from 279 to 434 MB/s and halved the
# daemon's CPU (where even zstd's fastest level had cost 40% of it).
SAMPLE = 4096
INCOMPRESSIBLE = 0.97  # a sample shrinking less than this is taken as noise
_local = threading.local()

Payload = bytes | bytearray | memoryview


@dataclass(frozen=True)
class SealedChunk:
    digest: bytes
    payload: Payload  # a zstd frame, or the raw bytes when it is raw_len long; written as it is
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


def _noisy(size: int, sample_compressed_len) -> bool:
    """Whether a block is taken as incompressible: large enough to sample, and its compressed
    sample (asked for only then) did not shrink."""
    return size >= 8 * SAMPLE and sample_compressed_len() > INCOMPRESSIBLE * SAMPLE


def _kept(digest: bytes, data: Payload, frame: Payload | None) -> SealedChunk:
    """The frame if it is shorter than the data, else the data itself (never a copy)."""
    if frame is None or len(frame) >= len(data):
        return SealedChunk(digest, data, len(data))
    return SealedChunk(digest, frame, len(data))


def seal(data: Payload, digest: bytes | None = None) -> SealedChunk:
    """Compress (and hash, unless the caller already has the digest) without copying."""
    compressor = _codec()[0]
    digest = digest or digest_of(data)
    if _noisy(len(data), lambda: len(compressor.compress(memoryview(data)[:SAMPLE]))):
        return _kept(digest, data, None)
    return _kept(digest, data, compressor.compress(data))


def seal_many(blocks: list[tuple[bytes, Payload]], threads: int = 1) -> list[SealedChunk]:
    """Compress many hashed blocks (digest, data) in a few calls, each with the GIL released
    throughout (``threads`` > 1 adds zstd's own threads; the flusher already runs two callers).

    Why not ``seal`` in a loop: every call hands the GIL back and forth, and beside a busy FUSE
    thread each hand-back waits for the switch interval; sealing 64 MiB that way took 0.2-1.0 s
    instead of 0.03 s. Here a whole batch costs two calls: the 4 KiB samples, then the blocks
    that are not noise. Frames are views of zstd's output, not copies."""
    if len(blocks) < 4:
        return [seal(data, digest) for digest, data in blocks]
    compressor = _codec()[0]
    sealed = [_kept(digest, data, None) for digest, data in blocks]
    picked = list(_sampled(compressor, blocks, threads))
    if picked:
        frames = compressor.multi_compress_to_buffer([blocks[i][1] for i in picked], threads=threads)
        for frame, i in zip(frames, picked):
            sealed[i] = _kept(blocks[i][0], blocks[i][1], memoryview(frame))
    return sealed


WORTH_DEFERRING = 0.125  # of a batch's bytes: less is left raw for good, with no rewrite later
# A block whose sample zstd shrinks this much is compressed at once even by a flusher that is
# behind: such data compresses at 3.7-8 GB/s (zeros around a few written pages, repetitive
# logs) against ~500 MB/s for CSV (sample ratio ~0.33), so writing it raw would cost more disk
# time than zstd takes. 20,000 random 4 KiB writes into a sparse file went from 38.9k to 31.8k/s
# when those blocks were stored raw (docs/benchmarks.md, session 19).
EAGER_SAMPLE_RATIO = 0.15


def seal_quickly(blocks: list[tuple[bytes, Payload]]) -> tuple[list[SealedChunk], bool]:
    """For when compressing now would hold up the writer: blocks zstd shrinks a lot are
    compressed (that is fast), the rest kept as they are; and whether the raw ones zstd would
    shrink are enough to be worth compressing later (fs/recompress.py reads them back and moves
    them). Costs the 4 KiB samples, ~3% of compressing. Random bytes written through the page
    cache arrive with a few short pieces of blocks, too short to sample: they alone must not
    have 512 MiB of random bytes rewritten."""
    compressor = _codec()[0]
    sealed = [_kept(digest, data, None) for digest, data in blocks]
    sampled = _sampled(compressor, blocks)
    eager = [i for i, sample_length in sampled.items()
             if len(blocks[i][1]) >= 8 * SAMPLE and sample_length <= EAGER_SAMPLE_RATIO * SAMPLE]
    if eager:
        frames = compressor.multi_compress_to_buffer([blocks[i][1] for i in eager])
        for frame, i in zip(frames, eager):
            sealed[i] = _kept(blocks[i][0], blocks[i][1], memoryview(frame))
    deferred = set(sampled) - set(eager)
    total = sum(len(data) for _, data in blocks)
    worth = sum(len(blocks[i][1]) for i in deferred) >= WORTH_DEFERRING * total
    return sealed, bool(deferred) and worth


def _sampled(compressor: zstandard.ZstdCompressor, blocks: list[tuple[bytes, Payload]],
             threads: int = 1) -> dict[int, int]:
    """The blocks that are not noise, by position, each with its first 4 KiB's compressed
    length (the samples are compressed in one call)."""
    if not blocks:
        return {}
    samples = compressor.multi_compress_to_buffer([memoryview(data)[:SAMPLE] for _, data in blocks], threads=threads)
    return {i: len(samples[i]) for i, (_, data) in enumerate(blocks) if not _noisy(len(data), lambda i=i: len(samples[i]))}


def unseal(digest: bytes, payload: bytes, raw_len: int, where: str) -> bytes:
    """Decompress and prove the bytes are the ones that were written, or raise.

    A payload of the chunk's own length is its raw bytes, unless its hash says otherwise:
    stores of format 1 could hold a frame exactly that long, which then decompresses."""
    stored_raw = len(payload) == raw_len
    if stored_raw and digest_of(payload) == digest:
        return payload if isinstance(payload, bytes) else bytes(payload)
    try:
        data = _codec()[1].decompress(payload, max_output_size=raw_len)
    except zstandard.ZstdError as exc:
        if stored_raw:
            raise CorruptChunkError(f"chunk {digest.hex()[:16]} in {where} fails its hash check") from exc
        raise CorruptChunkError(f"chunk {digest.hex()[:16]} in {where} does not decompress: {exc}") from exc
    if len(data) != raw_len or digest_of(data) != digest:
        raise CorruptChunkError(f"chunk {digest.hex()[:16]} in {where} fails its hash check")
    return data
