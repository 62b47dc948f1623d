"""Chunks out of remote packs: adjacent chunks of one pack come in one ranged GET, and every
chunk is proved against its blake3 digest before anyone sees it."""

from __future__ import annotations

from typing import Iterable, Iterator

from cowfs.fs.chunks import SealedChunk, unseal
from cowfs.fs.errors import CorruptChunkError
from cowfs.fs.records import ChunkLocation
from cowfs.fs.remote.bucket import Bucket

READ_GAP = 1 << 20  # chunks of one pack closer than this come in one ranged GET

Wanted = tuple[bytes, str, ChunkLocation]  # digest, pack name, where in that pack


def coalesced_ranges(wanted: list[tuple[bytes, ChunkLocation]]) -> Iterator[list[tuple[bytes, ChunkLocation]]]:
    """Chunks of one pack, sorted by offset, grouped so that each group is one ranged GET."""
    group: list[tuple[bytes, ChunkLocation]] = []
    for digest, location in sorted(wanted, key=lambda item: item[1].offset):
        if group:
            last = group[-1][1]
            if location.offset - (last.offset + last.stored_len) > READ_GAP:
                yield group
                group = []
        group.append((digest, location))
    if group:
        yield group


def fetch_verified(bucket: Bucket, wanted: Iterable[Wanted],
                   damaged: dict[bytes, CorruptChunkError] | None = None) -> Iterator[tuple[SealedChunk, bytes]]:
    """Each wanted chunk as stored and as bytes, verified. A damaged one is never returned: it
    raises ``CorruptChunkError`` naming the chunk and the pack, or with ``damaged`` given, is
    recorded there and skipped."""
    by_pack: dict[str, list[tuple[bytes, ChunkLocation]]] = {}
    for digest, pack, location in wanted:
        by_pack.setdefault(pack, []).append((digest, location))
    for pack, chunks in by_pack.items():
        for group in coalesced_ranges(chunks):
            first = group[0][1].offset
            last = group[-1][1].offset + group[-1][1].stored_len - 1
            body = bucket.get("packs", pack, first, last)
            for digest, location in group:
                payload = body[location.offset - first:location.offset - first + location.stored_len]
                try:
                    data = unseal(digest, payload, location.raw_len, f"remote pack {pack}")
                except CorruptChunkError as exc:
                    if damaged is None:
                        raise
                    damaged[digest] = exc
                    continue
                yield SealedChunk(digest, payload, location.raw_len), data
