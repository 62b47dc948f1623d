"""Proving a store is whole: every chunk against its hash, every reference from the index to
the packs, every version chain and every directory tree of every head and snapshot.

``check`` reports in plain words; ``repair=True`` fixes what can be fixed without guessing:
index entries rebuilt from packs, corrupt chunks re-pointed at an intact copy, directory
entries that point at nothing removed from live heads.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from cowfs.fs.errors import CorruptChunkError, StoreError
from cowfs.fs.keys import DB_BLOCKS, DB_CHUNKS, U32, U64, epoch_of
from cowfs.fs.progress import Progress, silent
from cowfs.fs.packs import HEADER, record_header, rewrite_header, scan_pack
from cowfs.fs.parallel import map_shared
from cowfs.fs.records import ChunkLocation
from cowfs.fs.store import ROOT_INODE, Store, unseal_stored
from cowfs.fs.tree import Tree

CHECK_GROUP = 64  # chunks read, then verified on all cores, at a time (8 MiB at most)


@dataclass
class FsckReport:
    damage: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    repaired: list[str] = field(default_factory=list)
    chunks_checked: int = 0
    trees_checked: int = 0

    @property
    def clean(self) -> bool:
        return not self.damage


def _pack_copies(store: Store) -> dict[bytes, list[ChunkLocation]]:
    """Every chunk the pack files hold, intact or not, by digest."""
    copies: dict[bytes, list[ChunkLocation]] = {}
    for path in sorted((store.path / "packs").glob("*.pack")):
        for digest, raw_len, offset, stored_len in scan_pack(path):
            copies.setdefault(digest, []).append(ChunkLocation(int(path.stem), offset, stored_len, raw_len))
    return copies


def _intact(store: Store, digest: bytes, location: ChunkLocation) -> bool:
    return _verified((digest, location, _pack_bytes(store, location)))


def _pack_bytes(store: Store, location: ChunkLocation) -> bytes | None:
    try:
        return store.packs.read(location)
    except CorruptChunkError:  # the pack is missing or shorter than the index says
        return None


def _verified(read: tuple[bytes, ChunkLocation, bytes | None]) -> bool:
    digest, location, payload = read
    if payload is None:
        return False
    try:
        unseal_stored(digest, payload, location)
        return True
    except CorruptChunkError:
        return False


def indexed_chunks(store: Store) -> list[tuple[bytes, ChunkLocation]]:
    with store.index.reading() as txn:
        return [(d, ChunkLocation.decode(v)) for d, v in txn.cursor(db=store.index.db(DB_CHUNKS))]


def check_chunks(store: Store, report: FsckReport, repair: bool,
                 entries: list[tuple[bytes, ChunkLocation]], progress: Progress = silent) -> set[bytes]:
    """Verify every indexed chunk; returns the digests that cannot be read."""
    bad: set[bytes] = set()
    copies: dict[bytes, list[ChunkLocation]] | None = None
    for first in range(0, len(entries), CHECK_GROUP):
        progress("checking chunks", first, len(entries))
        group = entries[first:first + CHECK_GROUP]
        # Read on this thread; decompress and hash on all cores. 384 MiB of chunks on two
        # cores: 0.29 -> 0.19-0.22 s from the page cache, 0.52 -> 0.42-0.50 s from the disk.
        intact = map_shared(_verified, [(digest, location, _pack_bytes(store, location)) for digest, location in group])
        report.chunks_checked += len(group)
        for (digest, location), ok in zip(group, intact):
            if not ok:
                copies = _check_damaged(store, report, repair, digest, location, bad, copies)
    return bad


def _check_damaged(store: Store, report: FsckReport, repair: bool, digest: bytes, location: ChunkLocation,
                   bad: set[bytes], copies: dict[bytes, list[ChunkLocation]] | None
                   ) -> dict[bytes, list[ChunkLocation]]:
    """Re-point a damaged chunk at an intact copy (with ``repair``) or report it; returns the
    pack scan, made once and only if some chunk is damaged."""
    copies = _pack_copies(store) if copies is None else copies
    spare = next((c for c in copies.get(digest, []) if c != location and _intact(store, digest, c)), None)
    if spare is not None and repair:
        store.index.write(lambda txn: txn.put(digest, spare.encode(), db=store.index.db(DB_CHUNKS)))
        report.repaired.append(f"chunk {digest.hex()[:16]}: re-pointed from pack {location.pack} "
                               f"to an intact copy in pack {spare.pack}")
        return copies
    bad.add(digest)
    hint = " (an intact copy exists: run with --repair)" if spare else ""
    report.damage.append(f"chunk {digest.hex()[:16]} in pack {location.pack} at {location.offset} "
                         f"fails its hash check{hint}")
    return copies


def check_record_headers(store: Store, report: FsckReport, repair: bool,
                         entries: list[tuple[bytes, ChunkLocation]], bad: set[bytes]) -> None:
    """Reads go by the index, so a damaged record header costs nothing today; but it is what
    `--repair` and a rebuilt index find a chunk by, so a flipped byte there hides that copy."""
    for digest, location in entries:
        expected = record_header(digest, location.raw_len, location.stored_len)
        if store.packs.header(location) == expected:
            continue
        where = f"chunk {digest.hex()[:16]} in pack {location.pack} at {location.offset - HEADER.size}"
        if repair and digest not in bad:  # the payload matched its hash: the header is certain
            rewrite_header(store.path / "packs", location, expected)
            report.repaired.append(f"record header of {where}: rewritten from the index")
            continue
        report.damage.append(f"record header of {where} is damaged: the chunk still reads, but repair "
                             "could not find this copy by it" + ("" if digest in bad else
                                                                 " (run with --repair to rewrite it)"))


def check_references(store: Store, report: FsckReport, repair: bool, bad: set[bytes]) -> dict[bytes, list]:
    """Every block record's chunk must be in the index (or, in a lazily mounted remote snapshot,
    listed as a remote chunk); returns the records that hit bad chunks."""
    hits: dict[bytes, list] = {}
    missing: dict[bytes, list] = {}
    with store.index.reading() as txn:
        chunks = store.index.db(DB_CHUNKS)
        for key, value in txn.cursor(db=store.index.db(DB_BLOCKS)):
            if not value:
                continue
            digest = value[1:]
            where = (U32.unpack_from(key)[0], U64.unpack_from(key, 4)[0], epoch_of(key))
            if digest in bad:
                hits.setdefault(digest, []).append(where)
            elif txn.get(digest, db=chunks) is None and store.remote_chunk(txn, digest) is None:
                missing.setdefault(digest, []).append(where)
    if missing:
        copies = _pack_copies(store)
        for digest, places in missing.items():
            spare = next((c for c in copies.get(digest, []) if _intact(store, digest, c)), None)
            if spare is not None and repair:
                store.index.write(lambda txn: txn.put(digest, spare.encode(), db=store.index.db(DB_CHUNKS)))
                report.repaired.append(f"chunk {digest.hex()[:16]}: index entry rebuilt from pack {spare.pack}")
                continue
            hits[digest] = places
            report.damage.append(f"chunk {digest.hex()[:16]} is used by {len(places)} block record(s) but is "
                                 "not in the index" + (" (found in a pack: run with --repair)" if spare else ""))
    return hits


def check_history(store: Store, report: FsckReport) -> None:
    with store.index.reading() as txn:
        branches = {b.id: store.branch(txn, b.id) for b in store.branches()}
    for branch in branches.values():
        if branch.parent is None:
            continue
        parent = branches.get(branch.parent[0])
        if parent is None:
            report.damage.append(f"branch {branch.name} forks from branch {branch.parent[0]}, which is gone")
        elif branch.parent[1] > parent.head:
            report.damage.append(f"branch {branch.name} forks from epoch {branch.parent[1]} of {parent.name}, "
                                 f"beyond its head {parent.head}")
    for record in store.snapshots():
        branch = branches.get(record.branch)
        if branch is None:
            report.damage.append(f"snapshot {record.name} belongs to branch {record.branch}, which is gone")
        elif record.epoch > branch.head:
            report.damage.append(f"snapshot {record.name} is at epoch {record.epoch}, beyond its branch's head")


def check_trees(store: Store, report: FsckReport, repair: bool, hits: dict[bytes, list],
                progress: Progress = silent) -> None:
    """Walk every head and every snapshot; name the files that lost data."""
    views: dict[tuple[int, int | None], str] = {}
    for branch in store.branches():
        views[(branch.id, None)] = f"branch {branch.name}"
    for record in store.snapshots():
        views.setdefault((record.branch, record.epoch), f"snapshot {record.name}")
    damaged_inodes = {(b, ino) for places in hits.values() for b, ino, _ in places}
    for done, ((branch_id, epoch), name) in enumerate(views.items()):
        progress("checking trees", done, len(views))
        tree = Tree(store, branch_id, epoch)
        report.trees_checked += 1
        _walk_checking(tree, ROOT_INODE, b"", name, report, repair and epoch is None, damaged_inodes)
        if tree.has_dirty:
            tree.flush()


def _walk_checking(tree: Tree, ino: int, prefix: bytes, view_name: str, report: FsckReport, repair: bool,
                   damaged: set[tuple[int, int]]) -> None:
    subdirs = 0
    for name, child in tree.listdir(ino):
        path = prefix + b"/" + name if prefix else name
        shown = path.decode(errors="replace")
        try:
            attrs = tree.getattr(child)
        except OSError:
            if repair:
                tree.drop_entry(ino, name)
                report.repaired.append(f"{view_name}: removed the entry {shown}, whose inode {child} was gone")
            else:
                report.damage.append(f"{view_name}: {shown} points at inode {child}, which does not exist")
            continue
        if any((b, child) in damaged for b, _ in tree.view):
            report.damage.append(f"{view_name}: {shown} has data in a damaged chunk; reading it gives EIO")
        if attrs.is_dir:
            subdirs += 1
            _walk_checking(tree, child, path, view_name, report, repair, damaged)
    attrs = tree.getattr(ino)
    if attrs.nlink != subdirs + 2:
        report.notes.append(f"{view_name}: directory {prefix.decode(errors='replace') or '/'} counts "
                            f"{attrs.nlink} links, expected {subdirs + 2}")


def check(store: Store, repair: bool = False, progress: Progress = silent) -> FsckReport:
    report = FsckReport()
    if repair and store.readonly:
        raise StoreError("open the store writable to repair it")
    entries = indexed_chunks(store)
    bad = check_chunks(store, report, repair, entries, progress)
    check_record_headers(store, report, repair, entries, bad)
    hits = check_references(store, report, repair, bad)
    check_history(store, report)
    check_trees(store, report, repair, hits, progress)
    if repair:
        store.sync()
    return report

