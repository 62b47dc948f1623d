"""Garbage collection: drop record versions no snapshot or head can see, then the chunks no
record refers to, then rewrite packs that are mostly dead. It runs beside live daemons.

Why it is safe while daemons write (docs/write-path.md has the whole argument):
  * A version unneeded when scanned stays unneeded: new snapshots only freeze a head at or
    after the scanned one, and nothing older can become visible again.
  * Chunks: the round number is published before the scan; a commit that deduplicates
    against an existing chunk during the round records it in ``recent_refs``; the deleting
    transaction skips those. A commit after the deletion no longer finds the chunk and
    stores it again.
  * Packs being appended to are locked by their writer and left alone; a moved chunk's
    index entry is switched only if it still points at the old place.
Every change is made in short write transactions, so writers wait milliseconds at most.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from itertools import groupby

import lmdb

from cowfs.fs.errors import CorruptChunkError
from cowfs.fs.keys import (DB_BLOCKS, DB_CHUNKS, DB_META, DB_RECENT_REFS, EPOCH_BYTES, U32, U64,
                           VERSIONED_DBS, epoch_of)
from cowfs.fs.packs import PackMissingError, pack_in_use
from cowfs.fs.progress import Progress, silent
from cowfs.fs.records import ChunkLocation
from cowfs.fs.recompress import REWRITE_BELOW_LIVE_RATIO, PackBusy, compress_pack, relocate, resealed
from cowfs.fs.store import Store, bump_stat

DELETE_BATCH = 2000


@dataclass
class GcReport:
    versions_removed: int = 0
    chunks_removed: int = 0
    packs_rewritten: int = 0
    packs_deleted: int = 0
    packs_compressed: int = 0  # packs of chunks a daemon stored raw to keep up (fs/recompress.py)
    bytes_before: int = 0
    bytes_after: int = 0
    problems: list[str] = field(default_factory=list)


def store_bytes(store: Store) -> int:
    return sum(p.stat().st_size for p in store.path.rglob("*") if p.is_file())


def required_epochs(store: Store, txn: lmdb.Transaction) -> tuple[dict[int, set[int]], set[int]]:
    """Per branch, the epochs someone can read: its head, its snapshots, its children's fork points.
    Also the branches that are roots (no parent): their oldest tombstones hide nothing."""
    branches = [store.branch(txn, b.id) for b in store.branches()]
    required: dict[int, set[int]] = {b.id: {b.head} for b in branches}
    for record in store.snapshots():
        required.setdefault(record.branch, set()).add(record.epoch)
    for branch in branches:
        if branch.parent is not None:
            required.setdefault(branch.parent[0], set()).add(branch.parent[1])
    return required, {b.id for b in branches if b.parent is None}


def dead_versions(txn: lmdb.Transaction, db, required: dict[int, set[int]], roots: set[int]):
    """Keys of record versions that no required epoch sees."""
    cursor = txn.cursor(db)
    cursor.first()
    for name_key, group in groupby(cursor.iternext(), key=lambda kv: kv[0][:-EPOCH_BYTES]):
        versions = [(epoch_of(k), k, v) for k, v in group]  # newest first
        branch = U32.unpack_from(name_key)[0]
        needed: set[bytes] = set()
        for epoch in required.get(branch, ()):
            for version_epoch, key, _ in versions:
                if version_epoch <= epoch:
                    needed.add(key)
                    break
        if branch in roots:
            for _, key, value in reversed(versions):  # oldest first: tombstones with nothing beneath
                if key not in needed:
                    continue
                if value:
                    break
                needed.discard(key)
        for _, key, _ in versions:
            if key not in needed:
                yield key


def _delete_keys(store: Store, db, keys: list[bytes]) -> None:
    for start in range(0, len(keys), DELETE_BATCH):
        part = keys[start:start + DELETE_BATCH]
        store.index.write(lambda txn: [txn.delete(key, db=db) for key in part])


def collect_versions(store: Store) -> int:
    removed = 0
    with store.index.reading() as txn:
        required, roots = required_epochs(store, txn)
        dead = {name: list(dead_versions(txn, store.index.db(name), required, roots)) for name in VERSIONED_DBS}
    for name, keys in dead.items():
        _delete_keys(store, store.index.db(name), keys)
        removed += len(keys)
    return removed


def collect_chunks(store: Store) -> int:
    meta, chunks, refs = (store.index.db(n) for n in (DB_META, DB_CHUNKS, DB_RECENT_REFS))

    def open_round(txn: lmdb.Transaction) -> int:
        raw = txn.get(b"gc_round_counter", db=meta)
        number = (U64.unpack(raw)[0] if raw else 0) + 1
        txn.put(b"gc_round_counter", U64.pack(number), db=meta)
        txn.put(b"gc_round", U64.pack(number), db=meta)
        txn.drop(refs, delete=False)
        return number

    gc_round = store.index.write(open_round)
    try:
        with store.index.reading() as txn:
            referenced = {value[1:] for _, value in txn.cursor(db=store.index.db(DB_BLOCKS)) if value}
            candidates = [(digest, ChunkLocation.decode(raw)) for digest, raw in txn.cursor(db=chunks)
                          if digest not in referenced]

        def delete(txn: lmdb.Transaction) -> int:
            removed = 0
            for digest, location in candidates:
                raw = txn.get(digest, db=refs)
                if raw is not None and U64.unpack(raw)[0] == gc_round:
                    continue  # re-used by a commit while we scanned
                if txn.delete(digest, db=chunks):
                    removed += 1
                    bump_stat(txn, meta, b"chunk_count", -1)
                    bump_stat(txn, meta, b"chunk_raw_bytes", -location.raw_len)
                    bump_stat(txn, meta, b"chunk_stored_bytes", -location.stored_len)
            return removed

        return store.index.write(delete)
    finally:
        def close_round(txn: lmdb.Transaction) -> None:
            txn.put(b"gc_round", U64.pack(0), db=meta)
            txn.drop(refs, delete=False)

        store.index.write(close_round)


def rewrite_packs(store: Store, report: GcReport, progress: Progress = silent) -> None:
    store.close_pack()  # our own pack too may be rewritten; moved chunks go to a fresh one
    # Which packs are finished must be known before which chunks they hold: a daemon indexes
    # a batch's chunks and only then closes (unlocks) the pack. Reading the index first would
    # miss the chunks of a pack whose last batch committed in between, and delete them.
    finished = [path for path in sorted((store.path / "packs").glob("*.pack")) if not pack_in_use(path)]
    chunks = store.index.db(DB_CHUNKS)
    live: dict[int, list[tuple[bytes, ChunkLocation]]] = defaultdict(list)
    with store.index.reading() as txn:
        for digest, raw in txn.cursor(db=chunks):
            location = ChunkLocation.decode(raw)
            live[location.pack].append((digest, location))
    for done, path in enumerate(finished):
        progress("rewriting packs", done, len(finished))
        pack_id = int(path.stem)
        entries = live.get(pack_id, [])
        live_bytes = sum(loc.stored_len for _, loc in entries)
        if entries and live_bytes >= REWRITE_BELOW_LIVE_RATIO * path.stat().st_size:
            continue
        if entries and not _move_chunks(store, entries, report):
            continue
        path.unlink(missing_ok=True)  # a daemon that locked it after we listed it may have moved it too
        store.packs.forget(pack_id)
        report.packs_deleted += 1


def _move_chunks(store: Store, entries: list[tuple[bytes, ChunkLocation]], report: GcReport) -> bool:
    try:
        moving = resealed(entries, store.packs.read)
    except PackMissingError:
        return False  # a daemon compressing it moved its chunks and deleted it
    except CorruptChunkError as exc:
        report.problems.append(f"{exc}; pack {entries[0][1].pack} kept for `cowfs fsck`")
        return False
    relocate(store, moving)
    store.sync()
    store.close_pack()
    report.packs_rewritten += 1
    return True


def compress_packs(store: Store, report: GcReport, progress: Progress = silent) -> None:
    """Compress the packs daemons filled raw and have not compressed yet (a daemon stopped
    before it was idle long enough leaves them); a pack someone holds is theirs to finish."""
    store.close_pack()  # our own pack may be one of them
    pending = store.uncompressed_packs()
    for done, pack_id in enumerate(pending):
        progress("compressing packs", done, len(pending))
        try:
            compress_pack(store, pack_id)
        except PackBusy:
            continue
        except CorruptChunkError as exc:
            report.problems.append(f"{exc}; pack {pack_id} kept for `cowfs fsck`")
            continue
        report.packs_compressed += 1
    store.close_pack()


def collect_garbage(store: Store, progress: Progress = silent) -> GcReport:
    report = GcReport(bytes_before=store_bytes(store))
    progress("collecting old record versions", 0, 0)
    report.versions_removed = collect_versions(store)
    progress("collecting unreferenced chunks", 0, 0)
    report.chunks_removed = collect_chunks(store)
    compress_packs(store, report, progress)
    rewrite_packs(store, report, progress)
    store.sync()
    report.bytes_after = store_bytes(store)
    return report


__all__ = ["GcReport", "collect_garbage"]
