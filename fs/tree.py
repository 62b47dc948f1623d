"""A branch seen as a POSIX tree: inodes, directory entries, file data and xattrs.

A ``Tree`` is either the live head of a branch (writable) or a branch at a fixed epoch
(read-only: a snapshot). Every method is synchronous; the daemon calls them from its trio
thread, so each one is atomic with respect to the others without any lock.

File data is cut into fixed blocks of ``BLOCK_SIZE`` bytes. Writes land in dirty block
buffers in memory, and so does every namespace change (attributes, directory entries,
truncation, deletion): no request commits to LMDB, whose commits are fsynced (cowfs.fs.index).
``take_batch`` detaches all of it as a ``Batch`` tagged with the epoch it belongs to,
``seal_blocks`` hashes and compresses it and appends new chunks to a pack (safe in a
thread), and ``commit_batch``
indexes the chunks and writes the records in one LMDB transaction. docs/write-path.md
states the rules that keep reads, metadata changes and snapshots correct while a batch is
in flight.
"""

from __future__ import annotations

import errno
import functools
import itertools
import stat
import threading
import time
from collections import deque
from dataclasses import dataclass, field, replace
from typing import Callable, Iterator, TypeVar

import lmdb

from cowfs.fs import versions
from cowfs.fs.chunks import SealedChunk, digest_of, seal_many, seal_quickly
from cowfs.fs.errors import CorruptChunkError, FsError, RemoteChunkNeeded
from cowfs.fs.keys import (BRANCH_OWNER, DB_BLOCKS, DB_DIRENTS, DB_INODES, DB_ORPHANS, DB_XATTRS, U32, U64,
                           block_name, entry_name, name_of_entry)
from cowfs.fs.listing import DirListing
from cowfs.fs.recall import Recall
from cowfs.fs.records import ChunkLocation, InodeAttrs, SnapshotRecord
from cowfs.fs.store import MAX_CHANGED_LISTED, ROOT_INODE, Store

BLOCK_SIZE = 128 * 1024
ZEROS = memoryview(bytes(BLOCK_SIZE))
NAME_MAX = 255
RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2
SNAPSHOT_IDS_AHEAD = 32  # numbers reserved ahead, so that taking a snapshot writes nothing
T = TypeVar("T")
# As ext4 with 4 KiB blocks: a size beyond it is a mistake (truncate(2**62)), not a file.
MAX_FILE_SIZE = 16 * 2**40
BlockKey = tuple[int, int]

class Seam:
    """A block made of the end of one write request and the start of the next, kept as the two
    views until something needs it whole (sealing, on its worker thread, or a later write or
    read). The kernel's writeback sends 1 MiB requests that mostly start and end inside a block
    (851 of 1,024 in a 512 MiB write), and joining the two parts on the FUSE thread cost it a
    fresh 128 KiB buffer, its page faults and two copies per request."""

    __slots__ = ("parts",)

    def __init__(self, first: memoryview, rest: memoryview) -> None:
        self.parts = (first, rest)

    def __len__(self) -> int:
        return len(self.parts[0]) + len(self.parts[1])

    def joined(self) -> bytes:
        return b"".join(self.parts)


# A dirty block: its own buffer, a view of the immutable bytes a write brought, or two of them.
DirtyBlock = bytearray | memoryview | Seam
# A whole-block view and its digest, taken when it was written (``Tree._share_piece``).
HashedView = tuple[memoryview, bytes]


@dataclass
class Batch:
    """Dirty state detached for flushing; it belongs to ``epoch`` whatever happens meanwhile."""

    epoch: int
    blocks: dict[BlockKey, DirtyBlock | None]  # None: a hole from here on (truncated)
    attrs: dict[int, InodeAttrs | None]  # None: the inode was deleted
    entries: dict[int, dict[bytes, int | None]] = field(default_factory=dict)  # dir -> name -> inode
    orphans: dict[int, bool] = field(default_factory=dict)  # inode -> has no name (True) / settled
    snapshot_id: int | None = None
    # Snapshots taken since the previous batch, this one's last: listed when it commits, so a
    # snapshot anyone can see holds all of its data (an unchanged one shares an earlier epoch).
    records: list[SnapshotRecord] = field(default_factory=list)
    # Blocks truncated or deleted at the head after this batch (of the head's epoch) was taken:
    # not worth committing, as the newer hole or tombstone at the same epoch replaces them.
    dropped: set[BlockKey] = field(default_factory=set)
    files: dict[int, set[int]] = field(default_factory=dict)  # inode -> its indexes in ``blocks``
    nbytes: int = 0  # bytes held in ``blocks``: the tree's dirty_bytes when it was taken
    hashed: dict[BlockKey, HashedView] = field(default_factory=dict)  # digests known from the writes


@dataclass
class SealedBlocks:
    """Blocks hashed and compressed, and the new chunks already appended to a pack."""

    chunks: dict[BlockKey, SealedChunk | None]
    written: dict[bytes, ChunkLocation]
    deferred: bool = False  # some were stored raw that zstd would shrink: compress their packs later

    def merge(self, other: "SealedBlocks") -> "SealedBlocks":
        return SealedBlocks(self.chunks | other.chunks, self.written | other.written,
                            self.deferred or other.deferred)


def seal_blocks(store: Store, blocks: dict[BlockKey, DirtyBlock],
                hashed: dict[BlockKey, HashedView] | None = None, compress: bool = True) -> SealedBlocks:
    """Hash, compress (unless told not to: fs/recompress.py does it later) and append to the
    pack: the CPU and I/O of a flush, safe in a thread (the caller has called
    ``store.ensure_pack_writer()``). All-zero blocks become holes."""
    hashed = hashed or {}
    blocks = {key: buf.joined() if isinstance(buf, Seam) else buf for key, buf in blocks.items()}
    digests = {key: block_digest(buf, hashed.get(key)) for key, buf in blocks.items()}
    unique = {digest: blocks[key] for key, digest in digests.items() if digest is not None}
    # Chunks the store holds already are only referenced, so they are not compressed: a file
    # written again as it was (notebooks re-save data all the time) costs hashing only.
    with store.index.reading() as txn:
        known = {digest: SealedChunk(digest, data, len(data)) for digest, data in unique.items()
                 if store.has_chunk(txn, digest)}
    new = [(digest, data) for digest, data in unique.items() if digest not in known]
    made, deferred = (seal_many(new), False) if compress else seal_quickly(new)
    sealed = known | {chunk.digest: chunk for chunk in made}
    chunks = {key: None if digest is None else sealed[digest] for key, digest in digests.items()}
    written = store.write_chunks(made)
    return SealedBlocks(chunks, written, deferred and bool(written))


def block_digest(buf: DirtyBlock | None, hashed: HashedView | None = None) -> bytes | None:
    """The block's digest, or None for a block of zeros or a truncated one (stored as a hole).

    Zeros are recognised by their hash, which sealing computes anyway: no extra pass. The digest
    taken when the block was written is used only for that very view (immutable bytes), so a
    block changed since can never be stored under its old name."""
    if buf is None:
        return None
    digest = hashed[1] if hashed is not None and hashed[0] is buf else digest_of(buf)
    return None if digest == zero_digest(len(buf)) else digest


@functools.lru_cache(maxsize=64)
def zero_digest(length: int) -> bytes:
    return digest_of(bytes(length))


class _Unknown:
    """What the in-memory layers say of a record they do not hold: ask the index."""


UNKNOWN = _Unknown()


CLOCK_REALTIME_COARSE = 5  # Linux's clock id; Python's time module does not name it


def _now() -> int:
    """The kernel's clock for file times: with the writeback cache it stamps writes and
    utime(UTIME_NOW) itself, with the coarse clock. A finer clock here would give a file created
    by the daemon a later time than the kernel's "now" a moment after (times going backwards)."""
    return time.clock_gettime_ns(CLOCK_REALTIME_COARSE)


def _check_name(name: bytes) -> None:
    if len(name) > NAME_MAX:
        raise FsError(errno.ENAMETOOLONG)
    if not name or b"/" in name or b"\x00" in name or name in (b".", b".."):
        raise FsError(errno.EINVAL)


class Tree:
    def __init__(self, store: Store, branch_id: int, epoch: int | None = None) -> None:
        self.store = store
        self.branch_id = branch_id
        self.readonly = epoch is not None or store.readonly
        # Under FUSE's writeback cache the kernel owns a file's mtime and ctime across writes
        # (what stat shows) and hands them over with a setattr; stamping the late-arriving data
        # here would record other times than the user saw.
        self.kernel_stamps_writes = False
        with store.index.reading() as txn:
            self.view = store.view(txn, branch_id, epoch)
        self.dirty_blocks: dict[BlockKey, DirtyBlock | None] = {}
        self.dirty_hashed: dict[BlockKey, HashedView] = {}  # of whole-block views in dirty_blocks
        # The keys of dirty_blocks by inode: deleting or truncating a file looks at its own
        # blocks, not at every dirty block (a scan per unlink made rm -rf after a build quadratic).
        self.dirty_files: dict[int, set[int]] = {}
        self.dirty_attrs: dict[int, InodeAttrs | None] = {}
        self.dirty_entries: dict[int, dict[bytes, int | None]] = {}
        self.dirty_orphans: dict[int, bool] = {}
        self.dirty_bytes = 0  # what the dirty block buffers hold: memory
        # What writes brought since the last batch was taken: a 4 KiB write into a stored block
        # makes 128 KiB dirty, so flushing by dirty_bytes alone flushed random writes ~32x too
        # early, and every later write into a flushed block read it back (the flusher uses both).
        self.dirty_written = 0
        self.inflight: list[Batch] = []
        # What the in-flight batches hold: the flusher holds writers back on it after every
        # write, so it is kept, not summed (a sum per write was ~8% of the FUSE thread).
        self.inflight_bytes = 0
        self._inode_pool: Iterator[int] = iter(())
        self._snapshot_at_epoch: dict[int, int] = {}  # closed epoch -> its snapshot, for accounting
        self._snapshot_ids: deque[int] = deque()  # reserved by an earlier write, in order
        self.unlisted: list[SnapshotRecord] = []  # taken since the last batch was (Batch.records)
        self._writing = threading.Lock()  # held by a write transaction of this tree (_write)
        self.changed_since_snapshot = True  # unknown after a restart, so assume changed
        # Committed records read lately (fs/recall.py says why they cannot go stale).
        self._recalled_attrs: Recall[int, InodeAttrs | None] = Recall()
        self._recalled_entries: Recall[tuple[int, bytes], int | None] = Recall()
        self.changed_inodes: set[int] = set()  # inodes changed since the last snapshot ("blame")
        self.last_snapshot: SnapshotRecord | None = None
        self._db_inodes = store.index.db(DB_INODES)
        self._db_dirents = store.index.db(DB_DIRENTS)
        self._db_blocks = store.index.db(DB_BLOCKS)
        self._db_xattrs = store.index.db(DB_XATTRS)
        self._db_orphans = store.index.db(DB_ORPHANS)

    @classmethod
    def at_snapshot(cls, store: Store, snapshot: SnapshotRecord) -> "Tree":
        return cls(store, snapshot.branch, snapshot.epoch)

    @property
    def head(self) -> int:
        return self.view[0][1]

    # -- attributes --------------------------------------------------------------------------
    def _stored_attrs(self, txn: lmdb.Transaction, ino: int) -> InodeAttrs | None:
        raw = versions.get(txn, self._db_inodes, self.view, ino, b"")
        return InodeAttrs.decode(raw) if raw is not None else None

    def _stored_entry(self, txn: lmdb.Transaction, parent: int, name: bytes) -> int | None:
        raw = versions.get(txn, self._db_dirents, self.view, parent, entry_name(name))
        return U64.unpack(raw)[0] if raw is not None else None

    def _pending_attrs(self, ino: int) -> InodeAttrs | None | _Unknown:
        if ino in self.dirty_attrs:
            return self.dirty_attrs[ino]
        for batch in reversed(self.inflight):
            if ino in batch.attrs:
                return batch.attrs[ino]
        return UNKNOWN

    def _known_attrs(self, ino: int) -> InodeAttrs | None | _Unknown:
        """What memory says of an inode: its uncommitted change, else its recalled record."""
        attrs = self._pending_attrs(ino)
        return self._recalled_attrs.get(ino, UNKNOWN) if attrs is UNKNOWN else attrs

    def _attrs(self, txn: lmdb.Transaction, ino: int,
               known: InodeAttrs | None | _Unknown = UNKNOWN) -> InodeAttrs:
        """An inode's attributes, or ENOENT; ``known`` is what memory said, if already asked."""
        attrs = self._known_attrs(ino) if known is UNKNOWN else known
        if attrs is UNKNOWN:
            attrs = self._recalled_attrs.remember(ino, self._stored_attrs(txn, ino))
        if attrs is None:
            raise FsError(errno.ENOENT)
        return attrs

    def _set_attrs(self, ino: int, attrs: InodeAttrs | None) -> None:
        self.changed_inodes.add(ino)
        self.dirty_attrs[ino] = attrs

    def getattr(self, ino: int) -> InodeAttrs:
        attrs = self._known_attrs(ino)
        if isinstance(attrs, InodeAttrs):  # the common case, answered without a read transaction
            return attrs
        with self.store.index.reading() as txn:
            return self._attrs(txn, ino, attrs)

    def stored_blocks(self, ino: int) -> int:
        """How many of a file's blocks hold data (holes, all-zero blocks included, do not): what
        ``st_blocks`` and so ``du``, ``cp --sparse`` and ``tar -S`` go by. Costs a scan of the
        file's block map, so callers ask only for large files and remember the answer."""
        with self.store.index.reading() as txn:
            present = {U64.unpack(name)[0] for name, _ in versions.iter_scan(txn, self._db_blocks, self.view, ino)}
        layers = [(batch.blocks, batch.files) for batch in self.inflight]
        for blocks, files in layers + [(self.dirty_blocks, self.dirty_files)]:
            for index in files.get(ino, ()):
                if blocks[(ino, index)] is None:
                    present.discard(index)
                else:
                    present.add(index)
        return len(present)

    def holes_among(self, ino: int, offset: int, length: int) -> int:
        """How many blocks of a byte range hold no data: asked just before a write, by how many
        blocks that write raises ``stored_blocks``, for the price of a lookup per block not yet
        dirty rather than a scan of the whole block map."""
        if length <= 0:
            return 0
        holes = 0
        with self.store.index.reading() as txn:
            size = self._attrs(txn, ino).size
            for index in range(offset // BLOCK_SIZE, (offset + length - 1) // BLOCK_SIZE + 1):
                if index * BLOCK_SIZE >= size:  # past the end: nothing there (appends look nothing up)
                    holes += 1
                    continue
                pending = self._pending_block((ino, index))
                if pending is UNKNOWN:
                    pending = versions.get(txn, self._db_blocks, self.view, ino, block_name(index))
                holes += pending is None
        return holes

    @property
    def has_dirty(self) -> bool:
        """Anything to commit: dirty state, or snapshot records not written yet."""
        return bool(self.dirty_blocks or self.dirty_attrs or self.dirty_entries or self.dirty_orphans
                    or self.unlisted)

    def _write(self, change: Callable[[lmdb.Transaction], T]) -> T:
        """One write transaction of this branch; it also tops up the reserved snapshot numbers.

        The lock orders transactions from the loop and from the flusher's worker thread, and
        with them the ranges reserved, so numbers keep the order in which snapshots are taken."""
        reserved = range(0)

        def then_reserve(txn: lmdb.Transaction) -> T:
            nonlocal reserved
            result = change(txn)
            wanted = SNAPSHOT_IDS_AHEAD - len(self._snapshot_ids)
            reserved = self.store.take_snapshot_ids(txn, wanted) if wanted > SNAPSHOT_IDS_AHEAD // 2 else range(0)
            return result

        with self._writing:
            result = self.store.index.write(then_reserve)
            self._snapshot_ids.extend(reserved)
        return result

    def reserve_snapshot_ids(self) -> None:
        """Taking a snapshot writes nothing while numbers are reserved: each commit tops them up,
        and a daemon reserves some when it starts."""
        self._write(lambda txn: None)

    def give_back_snapshot_ids(self) -> None:
        """At the end of a daemon, once flushed: numbers it reserved and did not use are not
        skipped by the next one."""
        ids = range(self._snapshot_ids[0], self._snapshot_ids[-1] + 1) if self._snapshot_ids else range(0)
        if ids and len(ids) == len(self._snapshot_ids) and not self.unlisted:
            self.store.index.write(lambda txn: self.store.give_back_snapshot_ids(txn, ids))
            self._snapshot_ids.clear()

    # -- directories -------------------------------------------------------------------------
    def _entry_layers(self, parent: int) -> list[dict[bytes, int | None]]:
        """The uncommitted entries of a directory, oldest first."""
        layers = [batch.entries[parent] for batch in self.inflight if parent in batch.entries]
        if parent in self.dirty_entries:
            layers.append(self.dirty_entries[parent])
        return layers

    def _known_entry(self, parent: int, name: bytes) -> int | None | _Unknown:
        """What memory says of a name: its uncommitted change, else its recalled record."""
        for layer in reversed(self._entry_layers(parent)):
            if name in layer:
                return layer[name]
        return self._recalled_entries.get((parent, name), UNKNOWN)

    def _entry(self, txn: lmdb.Transaction, parent: int, name: bytes,
               known: int | None | _Unknown = UNKNOWN) -> int | None:
        """The inode a name holds, or None; ``known`` is what memory said, if already asked."""
        ino = self._known_entry(parent, name) if known is UNKNOWN else known
        if ino is UNKNOWN:
            ino = self._recalled_entries.remember((parent, name), self._stored_entry(txn, parent, name))
        return ino

    def _pending_entries(self, parent: int) -> dict[bytes, int | None]:
        pending: dict[bytes, int | None] = {}
        for layer in self._entry_layers(parent):  # a newer layer's removal undoes an older creation
            pending.update(layer)
        return pending

    def _iter_entries(self, txn: lmdb.Transaction, parent: int) -> Iterator[tuple[bytes, int]]:
        """The directory's (name, inode) pairs in name order: the index's, streamed, with the
        uncommitted changes merged in."""
        pending = sorted(self._pending_entries(parent).items())
        stored = ((name_of_entry(name), U64.unpack(raw)[0])
                  for name, raw in versions.iter_scan(txn, self._db_dirents, self.view, parent))
        position = 0
        for name, ino in stored:
            while position < len(pending) and pending[position][0] < name:
                if pending[position][1] is not None:
                    yield pending[position]
                position += 1
            if position < len(pending) and pending[position][0] == name:
                if pending[position][1] is not None:
                    yield pending[position]
                position += 1
            else:
                yield name, ino
        yield from (entry for entry in pending[position:] if entry[1] is not None)

    def _set_entry(self, parent: int, name: bytes, ino: int | None) -> None:
        self.dirty_entries.setdefault(parent, {})[name] = ino

    def drop_entry(self, parent: int, name: bytes) -> None:
        """Remove a name whose inode is gone (fsck's repair): nothing else is touched."""
        self._writable()
        self._set_entry(parent, name, None)

    def _dir_attrs(self, txn: lmdb.Transaction, ino: int) -> InodeAttrs:
        attrs = self._attrs(txn, ino)
        if not attrs.is_dir:
            raise FsError(errno.ENOTDIR)
        return attrs

    def lookup(self, parent: int, name: bytes) -> tuple[int, InodeAttrs]:
        ino = self._known_entry(parent, name)
        attrs = self._known_attrs(ino) if isinstance(ino, int) else UNKNOWN
        if isinstance(attrs, InodeAttrs):  # the common case, answered without a read transaction
            return ino, attrs
        with self.store.index.reading() as txn:
            ino = self._entry(txn, parent, name, ino)
            if ino is None:
                self._dir_attrs(txn, parent)  # ENOTDIR or ENOENT for the parent itself first
                raise FsError(errno.ENOENT)
            # Only a live directory holds entries: finding one proves what _dir_attrs would.
            return ino, self._attrs(txn, ino, attrs)

    def listdir(self, ino: int) -> list[tuple[bytes, int]]:
        with self.store.index.reading() as txn:
            self._dir_attrs(txn, ino)
            return list(self._iter_entries(txn, ino))

    def listing(self, ino: int) -> DirListing:
        """``listdir`` packed, for the daemon to hold while a directory is read."""
        with self.store.index.reading() as txn:
            self._dir_attrs(txn, ino)
            return DirListing(self._iter_entries(txn, ino))

    def _is_empty_dir(self, txn: lmdb.Transaction, ino: int) -> bool:
        return next(self._iter_entries(txn, ino), None) is None

    # -- changing the namespace --------------------------------------------------------------
    def _writable(self) -> None:
        """Every change passes here, which is how a snapshot knows whether anything changed."""
        if self.readonly:
            raise FsError(errno.EROFS)
        self.changed_since_snapshot = True

    def _new_inode(self) -> int:
        ino = next(self._inode_pool, None)
        if ino is None:
            self._inode_pool = iter(self.store.allocate_inodes(1024))
            ino = next(self._inode_pool)
        return ino

    def _touch_dir(self, txn: lmdb.Transaction, ino: int, nlink_delta: int = 0, now: int | None = None) -> None:
        attrs = self._attrs(txn, ino)
        now = now or _now()
        self._set_attrs(ino, attrs.changed(mtime_ns=now, ctime_ns=now, nlink=attrs.nlink + nlink_delta))

    def create(self, parent: int, name: bytes, mode: int, uid: int, gid: int, rdev: int = 0,
               target: bytes = b"") -> tuple[int, InodeAttrs]:
        """Create a file, directory, symlink or device node (in memory until the next flush)."""
        self._writable()
        _check_name(name)
        ino = self._new_inode()
        now = _now()
        is_dir = stat.S_ISDIR(mode)

        with self.store.index.reading() as txn:
            parent_attrs = self._dir_attrs(txn, parent)
            if parent_attrs.mode & stat.S_ISGID:  # a shared project directory: its group carries on
                gid = parent_attrs.gid
                mode |= stat.S_ISGID if is_dir else 0
            attrs = InodeAttrs(mode, uid, gid, 2 if is_dir else 1, len(target), now, now, now, rdev, target)
            if self._entry(txn, parent, name) is not None:
                raise FsError(errno.EEXIST)
            self._set_attrs(ino, attrs)
            self._set_entry(parent, name, ino)
            self._touch_dir(txn, parent, 1 if is_dir else 0, now)
        return ino, attrs

    def link(self, ino: int, parent: int, name: bytes) -> InodeAttrs:
        self._writable()
        _check_name(name)

        with self.store.index.reading() as txn:
            attrs = self._attrs(txn, ino)
            if attrs.is_dir:
                raise FsError(errno.EPERM)
            self._dir_attrs(txn, parent)
            if self._entry(txn, parent, name) is not None:
                raise FsError(errno.EEXIST)
            now = _now()
            attrs = attrs.changed(nlink=attrs.nlink + 1, ctime_ns=now)
            self._set_attrs(ino, attrs)
            self._set_entry(parent, name, ino)
            self._touch_dir(txn, parent, 0, now)
            return attrs

    def _drop_link(self, ino: int, attrs: InodeAttrs, now: int) -> InodeAttrs:
        nlink = 0 if attrs.is_dir else attrs.nlink - 1
        attrs = attrs.changed(nlink=nlink, ctime_ns=now)
        self._set_attrs(ino, attrs)
        if nlink == 0:
            self.dirty_orphans[ino] = True
        return attrs

    def unlink(self, parent: int, name: bytes, *, directory: bool = False) -> tuple[int, InodeAttrs]:
        """Remove one name; returns the inode and its attributes after (nlink 0: no names left)."""
        self._writable()

        with self.store.index.reading() as txn:
            self._dir_attrs(txn, parent)
            ino = self._entry(txn, parent, name)
            if ino is None:
                raise FsError(errno.ENOENT)
            attrs = self._attrs(txn, ino)
            if directory and not attrs.is_dir:
                raise FsError(errno.ENOTDIR)
            if not directory and attrs.is_dir:
                raise FsError(errno.EISDIR)
            if directory and not self._is_empty_dir(txn, ino):
                raise FsError(errno.ENOTEMPTY)
            now = _now()
            self._set_entry(parent, name, None)
            self._touch_dir(txn, parent, -1 if directory else 0, now)
            return ino, self._drop_link(ino, attrs, now)

    def rename(self, old_parent: int, old_name: bytes, new_parent: int, new_name: bytes,
               flags: int = 0) -> tuple[int, InodeAttrs] | None:
        """Move a name; returns the inode it replaced (with its attributes after), if any."""
        self._writable()
        _check_name(new_name)
        if flags & ~(RENAME_NOREPLACE | RENAME_EXCHANGE):
            raise FsError(errno.EINVAL)  # RENAME_WHITEOUT: overlay filesystems' business

        with self.store.index.reading() as txn:
            self._dir_attrs(txn, old_parent)
            self._dir_attrs(txn, new_parent)
            moved = self._entry(txn, old_parent, old_name)
            if moved is None:
                raise FsError(errno.ENOENT)
            replaced = self._entry(txn, new_parent, new_name)
            moved_attrs = self._attrs(txn, moved)
            now = _now()
            if flags & RENAME_EXCHANGE:
                if replaced is None:
                    raise FsError(errno.ENOENT)
                self._exchange(txn, old_parent, old_name, moved, moved_attrs, new_parent, new_name, replaced, now)
                return None
            if replaced is not None and flags & RENAME_NOREPLACE:
                raise FsError(errno.EEXIST)
            if replaced == moved:
                return None
            replaced_attrs = self._attrs(txn, replaced) if replaced is not None else None
            if replaced_attrs is not None:
                if moved_attrs.is_dir and not replaced_attrs.is_dir:
                    raise FsError(errno.ENOTDIR)
                if not moved_attrs.is_dir and replaced_attrs.is_dir:
                    raise FsError(errno.EISDIR)
                if replaced_attrs.is_dir and not self._is_empty_dir(txn, replaced):
                    raise FsError(errno.ENOTEMPTY)
            self._set_entry(new_parent, new_name, moved)
            self._set_entry(old_parent, old_name, None)
            moved_dir = 1 if moved_attrs.is_dir else 0
            replaced_dir = 1 if replaced_attrs is not None and replaced_attrs.is_dir else 0
            if old_parent == new_parent:
                self._touch_dir(txn, old_parent, -replaced_dir, now)
            else:
                self._touch_dir(txn, old_parent, -moved_dir, now)
                self._touch_dir(txn, new_parent, moved_dir - replaced_dir, now)
            self._set_attrs(moved, moved_attrs.changed(ctime_ns=now))
            if replaced is None or replaced_attrs is None:
                return None
            return replaced, self._drop_link(replaced, replaced_attrs, now)

    def _exchange(self, txn: lmdb.Transaction, parent_a: int, name_a: bytes, ino_a: int, attrs_a: InodeAttrs,
                  parent_b: int, name_b: bytes, ino_b: int, now: int) -> None:
        attrs_b = self._attrs(txn, ino_b)
        self._set_entry(parent_a, name_a, ino_b)
        self._set_entry(parent_b, name_b, ino_a)
        if parent_a != parent_b:
            delta = (1 if attrs_b.is_dir else 0) - (1 if attrs_a.is_dir else 0)
            self._touch_dir(txn, parent_a, delta, now)
            self._touch_dir(txn, parent_b, -delta, now)
        else:
            self._touch_dir(txn, parent_a, 0, now)
        self._set_attrs(ino_a, attrs_a.changed(ctime_ns=now))
        self._set_attrs(ino_b, attrs_b.changed(ctime_ns=now))

    def delete_inode(self, ino: int) -> None:
        """Forget an inode that has no names and no open users; its old versions stay for snapshots."""
        self._writable()
        for index in list(self.dirty_files.get(ino, ())):
            self._drop_dirty_block((ino, index))
        self._forget_in_flight(ino, 0)
        self._set_attrs(ino, None)  # a tombstone, newer than anything in flight
        self.dirty_orphans[ino] = False

    def sweep_orphans(self) -> int:
        """Delete inodes left without names by a daemon that died while they were open.

        Called before mounting, when the kernel can hold no reference to any of them."""
        prefix = U32.pack(self.branch_id)
        with self.store.index.reading() as txn:
            cursor = txn.cursor(db=self._db_orphans)
            found = [BRANCH_OWNER.unpack(key)[1] for key in cursor.iternext(values=False)
                     if key.startswith(prefix)] if cursor.set_range(prefix) else []
        for ino in found:
            self.delete_inode(ino)
        return len(found)

    # -- attributes changed by the user ---------------------------------------------------------
    def setattr(self, ino: int, *, mode: int | None = None, uid: int | None = None, gid: int | None = None,
                size: int | None = None, atime_ns: int | None = None, mtime_ns: int | None = None,
                ctime_ns: int | None = None) -> InodeAttrs:
        self._writable()

        def change(txn: lmdb.Transaction) -> InodeAttrs:
            attrs = self._attrs(txn, ino)
            now = _now()
            changes: dict = {"ctime_ns": ctime_ns or now}
            if mode is not None:
                changes["mode"] = stat.S_IFMT(attrs.mode) | stat.S_IMODE(mode)
            if uid is not None:
                changes["uid"] = uid
            if gid is not None:
                changes["gid"] = gid
            if atime_ns is not None:
                changes["atime_ns"] = atime_ns
            if mtime_ns is not None:
                changes["mtime_ns"] = mtime_ns
            if size is not None and size != attrs.size:
                if size > MAX_FILE_SIZE:
                    raise FsError(errno.EFBIG)
                if not attrs.is_reg:
                    raise FsError(errno.EISDIR if attrs.is_dir else errno.EINVAL)
                self._truncate(txn, ino, attrs.size, size)
                changes["size"] = size
                if mtime_ns is None:
                    changes["mtime_ns"] = now
            new = attrs.changed(**changes)
            self._set_attrs(ino, new)
            return new

        with self.store.index.reading() as txn:
            return change(txn)

    def _forget_in_flight(self, ino: int, first_gone: int) -> set[int]:
        """Blocks from ``first_gone`` on stop existing at the head, also those still in flight.

        Reads never reach them again: the hole or tombstone that replaces them is newer dirty
        state. A batch of the head's epoch need not commit them; an older batch still does, for
        its snapshot. Returns the block indexes held in flight, which need holes at the head."""
        indexes: set[int] = set()
        for batch in self.inflight:
            keys = {(ino, index) for index in batch.files.get(ino, ()) if index >= first_gone}
            if batch.epoch == self.head:
                batch.dropped.update(keys)
            indexes.update(index for _, index in keys)
        return indexes

    def _truncate(self, txn: lmdb.Transaction, ino: int, old_size: int, new_size: int) -> None:
        if new_size >= old_size:
            return  # growing leaves a hole: absent blocks read as zeros
        first_gone = -(-new_size // BLOCK_SIZE)
        tail = new_size % BLOCK_SIZE
        if tail:
            boundary = new_size // BLOCK_SIZE
            buf = self._dirty_block(txn, ino, boundary, whole=False)
            if len(buf) > tail:
                self.dirty_bytes -= len(buf) - tail
                del buf[tail:]
        gone = {U64.unpack(name)[0] for name in versions.scan(txn, self._db_blocks, self.view, ino,
                                                                start=block_name(first_gone))}
        gone.update(self._forget_in_flight(ino, first_gone))
        gone.update(index for index in self.dirty_files.get(ino, ()) if index >= first_gone)
        for index in gone:
            self._drop_dirty_block((ino, index))
            self._set_dirty_block((ino, index), None)  # a hole at the head, committed with the batch

    def readlink(self, ino: int) -> bytes:
        attrs = self.getattr(ino)
        if not attrs.is_symlink:
            raise FsError(errno.EINVAL)
        return attrs.target

    # -- file data ---------------------------------------------------------------------------
    def _pending_block(self, key: BlockKey) -> DirtyBlock | None | _Unknown:
        """The block as the head or an in-flight batch holds it (None: a hole), newest first;
        UNKNOWN when only the index can tell."""
        if key in self.dirty_blocks:
            return self.dirty_blocks[key]
        for batch in reversed(self.inflight):
            if key in batch.blocks:
                return batch.blocks[key]
        return UNKNOWN

    def _block(self, txn: lmdb.Transaction, ino: int, index: int) -> bytes | DirtyBlock | None:
        return self._blocks(txn, ino, range(index, index + 1))[0]

    def _blocks(self, txn: lmdb.Transaction, ino: int, indexes: range) -> list[bytes | DirtyBlock | None]:
        """The blocks as a read sees them (None: a hole). Stored ones are read together, so
        their chunks are decompressed on all cores at once."""
        blocks: list[bytes | DirtyBlock | None] = []
        wanted: dict[int, bytes] = {}  # position in blocks -> digest of a stored block
        for index in indexes:
            pending = self._pending_block((ino, index))
            if pending is UNKNOWN:
                digest = versions.get(txn, self._db_blocks, self.view, ino, block_name(index))
                if digest is not None:
                    wanted[len(blocks)] = digest
                pending = None
            blocks.append(pending.joined() if isinstance(pending, Seam) else pending)
        if wanted:
            try:
                chunks = self.store.read_chunks(txn, list(wanted.values()))
            except RemoteChunkNeeded as needed:  # say where, so the fetch can read ahead in this file
                needed.ino = ino
                needed.block = next(indexes[i] for i, digest in wanted.items() if digest == needed.digest)
                raise
            for i, chunk in zip(wanted, chunks):
                blocks[i] = chunk
        return blocks

    def _dirty_block(self, txn: lmdb.Transaction, ino: int, index: int, whole: bool) -> bytearray:
        key = (ino, index)
        buf = self.dirty_blocks.get(key)
        if buf is None:  # not dirty yet, or truncated away (then _block gives the hole)
            base = None if whole else self._block(txn, ino, index)
            buf = bytearray(base) if base else bytearray()
            self._set_dirty_block(key, buf)
            self.dirty_bytes += len(buf)
        elif not isinstance(buf, bytearray):  # views of a write's bytes (``_share_piece``)
            buf = bytearray().join(buf.parts) if isinstance(buf, Seam) else bytearray(buf)
            self._set_dirty_block(key, buf)  # which forgets the digest taken of the view
        return buf

    def _share_piece(self, key: BlockKey, lo: int, piece: memoryview, reaches_end: bool) -> bool:
        """Keep a piece of an immutable write without a copy where it makes up the block: a whole
        block; the start of a block up to the file's end (the next request often goes on from
        there); or the rest of a block that such a start began, kept beside it as a ``Seam``."""
        if lo == 0 and (len(piece) == BLOCK_SIZE or reaches_end):
            self._share_block(key, piece)
            if len(piece) == BLOCK_SIZE:
                # Hashed here, on the FUSE thread (blake3 lets go of the GIL): in the sealing
                # threads each block's hash had to win the GIL back from a busy FUSE thread, and
                # a 64 MiB batch of such blocks took them 50-330 ms of hashing instead of ~15.
                self.dirty_hashed[key] = (piece, digest_of(piece))
            return True
        first = self.dirty_blocks.get(key)
        if type(first) is memoryview and len(first) == lo and lo + len(piece) == BLOCK_SIZE:
            self._share_block(key, Seam(first, piece))
            return True
        return False

    def _share_block(self, key: BlockKey, block: memoryview | Seam) -> None:
        """Make a block written from immutable ``bytes`` views of them, not a copy: a sequential
        write then costs one pass over its data less before sealing (A/B, 512 MiB written and
        fsynced: random bytes 208 -> 294 MB/s, text 327 -> 384). The views keep the requests
        alive (the kernel writes at most 1 MiB at once) until their batch commits."""
        old = self.dirty_blocks.get(key)
        self.dirty_bytes += len(block) - (len(old) if old is not None else 0)
        self._set_dirty_block(key, block)

    def _set_dirty_block(self, key: BlockKey, buf: DirtyBlock | None) -> None:
        self.dirty_blocks[key] = buf
        self.dirty_hashed.pop(key, None)
        self.dirty_files.setdefault(key[0], set()).add(key[1])

    def _drop_dirty_block(self, key: BlockKey) -> None:
        if key not in self.dirty_blocks:
            return
        buf = self.dirty_blocks.pop(key)
        self.dirty_hashed.pop(key, None)
        if buf is not None:
            self.dirty_bytes -= len(buf)
        indexes = self.dirty_files[key[0]]
        indexes.discard(key[1])
        if not indexes:
            del self.dirty_files[key[0]]

    def read(self, ino: int, offset: int, size: int) -> bytes:
        with self.store.index.reading() as txn:
            attrs = self._attrs(txn, ino)
            if attrs.is_dir:
                raise FsError(errno.EISDIR)
            end = min(offset + size, attrs.size)
            if offset >= end:
                return b""
            # One copy into the reply, from views of the blocks: a 1 MiB read used to be copied
            # twice more (into a growing bytearray, then into bytes). A/B, 1 GiB of random bytes
            # from packs in the page cache: 745-1,348 MB/s before, 1,131-1,450 after. A read of
            # one whole stored block (the kernel asks 128 KiB at a time without root's 1 MiB
            # read-ahead) is not copied at all.
            pieces: list[bytes | bytearray | memoryview] = []
            first = offset // BLOCK_SIZE
            blocks = self._blocks(txn, ino, range(first, (end - 1) // BLOCK_SIZE + 1))
            pos = offset
            while pos < end:
                index, lo = divmod(pos, BLOCK_SIZE)
                count = min(BLOCK_SIZE - lo, end - pos)
                block = blocks[index - first] or b""
                piece = block if lo == 0 and count == len(block) else memoryview(block)[lo:lo + count]
                pieces.append(piece)
                if len(piece) < count:
                    pieces.append(ZEROS[:count - len(piece)])
                pos += count
            return b"".join(pieces)

    def write(self, ino: int, offset: int, data: bytes) -> int:
        self._writable()
        view = memoryview(data)
        with self.store.index.reading() as txn:
            attrs = self._attrs(txn, ino)
            if not attrs.is_reg:
                raise FsError(errno.EISDIR if attrs.is_dir else errno.EINVAL)
            pos, end = offset, offset + len(data)
            if end > MAX_FILE_SIZE:
                raise FsError(errno.EFBIG)
            shareable = type(data) is bytes  # nobody can change it after we return
            while pos < end:
                index, lo = divmod(pos, BLOCK_SIZE)
                count = min(BLOCK_SIZE - lo, end - pos)
                if shareable and self._share_piece((ino, index), lo, view[pos - offset:pos - offset + count],
                                                   reaches_end=attrs.size <= end):
                    pos += count
                    continue
                buf = self._dirty_block(txn, ino, index, whole=(lo == 0 and count == BLOCK_SIZE))
                before = len(buf)
                if before < lo + count:
                    # Grown at once to as far as the file reaches into the block: random 4 KiB
                    # writes into a hole grew it at nearly every write, each time a new zeroed
                    # piece and often a move of the buffer (12% of the FUSE thread). The block is
                    # then also what writing the same bytes front to back makes: the same chunk.
                    buf.extend(ZEROS[:min(BLOCK_SIZE, max(attrs.size, end) - index * BLOCK_SIZE) - before])
                buf[lo:lo + count] = view[pos - offset:pos - offset + count]
                self.dirty_bytes += len(buf) - before
                pos += count
            self.dirty_written += len(data)
        if not self.kernel_stamps_writes:
            now = _now()
            self.dirty_attrs[ino] = attrs.changed(size=max(attrs.size, end), mtime_ns=now, ctime_ns=now)
        elif end > attrs.size:  # a write inside the file changes no attribute the daemon keeps
            self.dirty_attrs[ino] = attrs.changed(size=end)
        self.changed_inodes.add(ino)
        return len(data)

    def adopt_blocks(self, ino: int, blocks: list[tuple[int, bytes]], size: int) -> None:
        """Give a new file blocks whose chunks the store already holds, by digest: a pull stores
        the remote's chunks as they came (verified), so reading, hashing and compressing them
        again through ``write`` would only cost time. Every digest must be in the chunk index, or
        listed as a remote chunk (a lazy pull), which keeps "every block names a chunk" true."""
        self._writable()

        def change(txn: lmdb.Transaction) -> None:
            if not self._attrs(txn, ino).is_reg or ino in self.dirty_files:
                raise FsError(errno.EINVAL)
            for index, digest in blocks:
                if not self.store.has_chunk(txn, digest) and self.store.remote_chunk(txn, digest) is None:
                    raise CorruptChunkError(f"chunk {digest.hex()[:16]} is not in the store; it cannot be adopted")
                versions.put(txn, self._db_blocks, self.branch_id, self.head, ino, block_name(index), digest)

        self._write(change)
        self.changed_inodes.add(ino)
        self.setattr(ino, size=size)

    # -- xattrs ------------------------------------------------------------------------------
    def has_xattrs(self) -> bool:
        """Whether any extended attribute was ever set in this view (a daemon then keeps them
        reachable even when the mount did not ask for xattr support)."""
        with self.store.index.reading() as txn:
            cursor = txn.cursor(db=self._db_xattrs)
            for branch, _ in self.view:
                prefix = U32.pack(branch)
                if cursor.set_range(prefix) and cursor.key().startswith(prefix):
                    return True
        return False

    def getxattr(self, ino: int, name: bytes) -> bytes:
        with self.store.index.reading() as txn:
            self._attrs(txn, ino)
            value = versions.get(txn, self._db_xattrs, self.view, ino, entry_name(name))
        if value is None:
            raise FsError(errno.ENODATA)
        return value

    def listxattr(self, ino: int) -> list[bytes]:
        with self.store.index.reading() as txn:
            self._attrs(txn, ino)
            return sorted(name_of_entry(n) for n in versions.scan(txn, self._db_xattrs, self.view, ino))

    def setxattr(self, ino: int, name: bytes, value: bytes | None) -> None:
        """Set, or with None remove, an extended attribute."""
        self._writable()

        def change(txn: lmdb.Transaction) -> None:
            attrs = self._attrs(txn, ino)
            if value is None and versions.get(txn, self._db_xattrs, self.view, ino, entry_name(name)) is None:
                raise FsError(errno.ENODATA)
            versions.put(txn, self._db_xattrs, self.branch_id, self.head, ino, entry_name(name), value)
            self._set_attrs(ino, attrs.changed(ctime_ns=_now()))

        self._write(change)

    # -- flushing and snapshots ----------------------------------------------------------------
    def take_batch(self, snapshot_id: int | None = None) -> Batch | None:
        """Detach the dirty state (O(1): the dicts change hands) as a batch of the head epoch."""
        if not self.has_dirty and snapshot_id is None:
            return None
        batch = Batch(self.head, self.dirty_blocks, self.dirty_attrs, self.dirty_entries, self.dirty_orphans,
                      snapshot_id, self.unlisted, files=self.dirty_files, nbytes=self.dirty_bytes,
                      hashed=self.dirty_hashed)
        self.dirty_hashed = {}
        self.inflight_bytes += batch.nbytes
        self.unlisted = []
        self.dirty_blocks, self.dirty_files, self.dirty_attrs, self.dirty_bytes = {}, {}, {}, 0
        self.dirty_written = 0  # what writes brought counts from this batch on
        self.dirty_entries, self.dirty_orphans = {}, {}
        self.inflight.append(batch)
        return batch

    def seal(self, batch: Batch, compress: bool = True) -> SealedBlocks:
        """``seal_blocks`` for a whole batch, in this thread."""
        self.store.ensure_pack_writer()
        return seal_blocks(self.store, batch.blocks, batch.hashed, compress)

    def commit_batch(self, batch: Batch, sealed: SealedBlocks) -> int:
        """Store a sealed batch at its own epoch; returns the compressed bytes it added.

        Batches must commit in the order they were taken (the daemon has one flusher)."""
        added = self.write_batch(batch, sealed)
        self.batch_committed(batch)
        return added

    def write_batch(self, batch: Batch, sealed: SealedBlocks) -> int:
        """The index half of ``commit_batch``. The daemon runs it in a worker thread, so that
        its fdatasync never stops the FUSE loop, then calls ``batch_committed`` on the loop.

        Meanwhile the loop may read (the batch is still in flight, so reads see it either way),
        take snapshots and mark blocks of the batch dropped (it then commits them anyway; the
        newer state that dropped them still overrides them). Its own writes wait for this one."""
        assert self.inflight and self.inflight[0] is batch, "batches commit in the order taken"
        store = self.store

        def change(txn: lmdb.Transaction) -> int:
            for record in batch.records:
                store.list_snapshot(txn, record)
            kept = {key: chunk for key, chunk in sealed.chunks.items() if key not in batch.dropped}
            added = store.add_chunks(txn, (c for c in kept.values() if c is not None), sealed.written)
            if sealed.deferred:
                store.note_uncompressed(txn, {location.pack for location in sealed.written.values()})
            for (ino, index), chunk in kept.items():
                versions.put(txn, self._db_blocks, self.branch_id, batch.epoch, ino, block_name(index),
                             None if chunk is None else chunk.digest)
            for ino, attrs in batch.attrs.items():
                versions.put(txn, self._db_inodes, self.branch_id, batch.epoch, ino, b"",
                             None if attrs is None else attrs.encode())
            for parent, names in batch.entries.items():
                for name, child in names.items():
                    versions.put(txn, self._db_dirents, self.branch_id, batch.epoch, parent, entry_name(name),
                                 None if child is None else U64.pack(child))
            for ino, orphaned in batch.orphans.items():
                key = BRANCH_OWNER.pack(self.branch_id, ino)
                if orphaned:
                    txn.put(key, b"", db=self._db_orphans)
                else:
                    txn.delete(key, db=self._db_orphans)
            # Space is charged to the snapshot that closed the batch's epoch, or, until that one
            # is listed (with the epoch's last batch), to the open epoch: listing takes it over.
            owner = self._snapshot_at_epoch.get(batch.epoch)
            record = store.snapshot_in(txn, owner) if owner is not None else None
            if record is not None:
                durable = record.durable or batch.snapshot_id == owner
                store.put_snapshot(txn, replace(record, durable=durable, bytes_added=record.bytes_added + added))
            else:
                branch = store.branch(txn, self.branch_id)
                store.put_branch(txn, replace(branch, bytes_since_snapshot=branch.bytes_since_snapshot + added))
            return added

        return self._write(change)

    def batch_committed(self, batch: Batch) -> None:
        """Once ``write_batch`` returned, on the thread that serves reads: they now find the
        batch in the index."""
        self.inflight.pop(0)
        self.inflight_bytes -= batch.nbytes
        for ino in batch.attrs:  # the index now holds newer records than any recalled
            self._recalled_attrs.forget(ino)
        for parent, names in batch.entries.items():
            for name in names:
                self._recalled_entries.forget((parent, name))
        if batch.snapshot_id is not None:
            self._snapshot_at_epoch.pop(batch.epoch, None)

    def flush(self) -> int:
        """Take, seal and commit in one go (what tests and the daemon's shutdown use)."""
        added = 0
        while self.inflight:
            batch = self.inflight[0]
            added += self.commit_batch(batch, self.seal(batch))
        batch = self.take_batch()
        if batch is not None:
            added += self.commit_batch(batch, self.seal(batch))
        return added

    def snapshot(self, label: str = "", meta: dict | None = None) -> tuple[SnapshotRecord, Batch | None]:
        """Take a snapshot at once, writing nothing: its number was reserved by an earlier commit.

        The record travels with the batch returned, and is listed (`cowfs log` shows it,
        `cowfs mount` finds it) when that batch commits: so a snapshot that can be seen holds
        all of its data, and a caller waits for the disk only if it asks to. The snapshot is
        durable once the store is synced after that commit.

        When nothing changed since the previous snapshot of this tree, the new one shares its
        epoch (``same_as`` tells the log it added nothing) and no batch is returned: the record
        goes with the next batch taken (``take_batch``, which ``flush`` and a flusher's kick call)."""
        if self.readonly:
            raise FsError(errno.EROFS)
        if not self._snapshot_ids:
            self.reserve_snapshot_ids()
        number = self._snapshot_ids.popleft()
        previous, meta = self.last_snapshot, meta or {}
        if not self.changed_since_snapshot and previous is not None:
            record = SnapshotRecord(number, previous.branch, previous.epoch, time.time(), label, meta, 0,
                                    previous.durable, same_as=previous.same_as or previous.id)
            self.unlisted.append(record)
            self.last_snapshot = record
            return record, None
        record = SnapshotRecord(number, self.branch_id, self.head, time.time(), label, meta, 0, False,
                                changed_inodes=sorted(itertools.islice(self.changed_inodes, MAX_CHANGED_LISTED)),
                                changed_count=len(self.changed_inodes))
        self.unlisted.append(record)
        self.last_snapshot = record
        self._snapshot_at_epoch[record.epoch] = record.id
        batch = self.take_batch(snapshot_id=record.id)
        assert batch is not None
        self.view = ((self.branch_id, record.epoch + 1),) + self.view[1:]
        self.changed_since_snapshot = False
        self.changed_inodes = set()
        return record, batch

    # -- walking -------------------------------------------------------------------------------
    def walk(self, ino: int = ROOT_INODE, prefix: bytes = b"") -> Iterator[tuple[bytes, int, InodeAttrs]]:
        """Every path below ``ino`` with its inode and attributes, parents before children."""
        for name, child in self.listdir(ino):
            path = prefix + b"/" + name if prefix else name
            attrs = self.getattr(child)
            yield path, child, attrs
            if attrs.is_dir:
                yield from self.walk(child, path)

    def resolve(self, path: bytes) -> tuple[int, InodeAttrs] | None:
        """The inode at a path relative to the root (symlinks are not followed), or None."""
        ino, attrs = ROOT_INODE, self.getattr(ROOT_INODE)
        for part in (p for p in path.split(b"/") if p and p != b"."):
            try:
                ino, attrs = self.lookup(ino, part)
            except FsError:
                return None
        return ino, attrs

    def blocks_from(self, ino: int, first: int, count: int) -> list[tuple[int, bytes]]:
        """The committed digests of blocks ``first`` to ``first + count - 1`` of a file, in order
        (holes left out): what a read-ahead of the next blocks needs."""
        with self.store.index.reading() as txn:
            last = min(first + count, -(-self._attrs(txn, ino).size // BLOCK_SIZE))
            found = []
            for index in range(first, last):
                digest = versions.get(txn, self._db_blocks, self.view, ino, block_name(index))
                if digest is not None:
                    found.append((index, digest))
            return found

    def block_digests(self, ino: int) -> dict[bytes, bytes]:
        """The stored chunk of every block of a file (what diff compares)."""
        with self.store.index.reading() as txn:
            return versions.scan(txn, self._db_blocks, self.view, ino)

