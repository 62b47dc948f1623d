"""A store: one directory holding the LMDB index and the pack files.

The store owns branches, snapshots, counters and chunks. It knows nothing about paths in the
workspace; ``cowfs.fs.tree`` builds the filesystem on top of it.
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
import stat
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable, Iterable, Sequence

import lmdb

from cowfs.fs import versions
from cowfs.fs.cache import ByteLRU
from cowfs.fs.chunks import SealedChunk, unseal
from cowfs.fs.errors import CorruptChunkError, RemoteChunkNeeded, StoreError
from cowfs.fs.index import Index
from cowfs.fs.keys import (DB_BRANCH_NAMES, DB_BRANCHES, DB_CHUNKS, DB_INODES, DB_META,
                           DB_RECENT_REFS, DB_REMOTE_CHUNKS, DB_SNAPSHOTS, DB_UNCOMPRESSED_PACKS,
                           U32, U64)
from cowfs.fs.packs import PackMissingError, PackReader, PackWriter, sync_directory
from cowfs.fs.parallel import map_shared
from cowfs.fs.records import (BranchRecord, ChunkLocation, InodeAttrs, RemoteChunk, SnapshotRecord,
                              format_snapshot_id)
from cowfs.fs.remote.cache import DEFAULT_LIMIT, ChunkCache
from cowfs.fs.versions import View

FORMAT = b"cowfs-store-2"
# Format 1 packs hold only zstd frames; format 2 may store a chunk raw (docs/format.md). This
# version reads both, and marks a format 1 store as 2 when it first opens it for writing, so
# that an older cowfs refuses it instead of failing on raw chunks.
READABLE_FORMATS = (b"cowfs-store-1", FORMAT)
MAIN_BRANCH = "main"
ROOT_INODE = 1
FIRST_EPOCH = 1
MAX_CHANGED_LISTED = 2000
NEEDS_FSCK = "NEEDS_FSCK"  # written when a daemon meets damage; `cowfs fsck --repair` clears it
STATS = ("chunk_count", "chunk_raw_bytes", "chunk_stored_bytes", "logical_bytes")


def default_store_path() -> Path:
    data_home = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(data_home) / "cowfs" / "default"


def _get_u64(txn: lmdb.Transaction, db, name: bytes, default: int = 0) -> int:
    raw = txn.get(name, db=db)
    return U64.unpack(raw)[0] if raw else default


def bump_stat(txn: lmdb.Transaction, meta, name: bytes, delta: int) -> None:
    """Add ``delta`` to one of the store's statistics (never below zero)."""
    txn.put(name, U64.pack(max(0, _get_u64(txn, meta, name) + delta)), db=meta)


class Store:
    """An open store. One per process; it may be shared by several trees of that process."""

    def __init__(self, path: Path, index: Index, *, readonly: bool) -> None:
        self.path = path
        self.index = index
        self.readonly = readonly
        self.packs = PackReader(path / "packs")
        self.chunk_cache: ByteLRU[bytes] = ByteLRU(64 << 20)
        self._writer: PackWriter | None = None
        self.remote_cache_limit = DEFAULT_LIMIT
        self._remote_caches: dict[str, ChunkCache] = {}
        # How a process that may block on the network gets a remote chunk it lacks (the CLI sets
        # one); without it, reading one raises RemoteChunkNeeded for the caller to fetch and retry.
        self.fetch_remote: Callable[[list[tuple[bytes, RemoteChunk]]], None] | None = None

    # -- opening ---------------------------------------------------------------------------
    @classmethod
    def init(cls, path: Path) -> "Store":
        path = Path(path).absolute()
        if path.exists():
            if not path.is_dir():
                raise StoreError(f"{path} exists and is not a directory; choose another --store path")
            if (path / "index.lmdb").exists():
                raise StoreError(f"{path} is already a cowfs store; use it as it is")
            if any(path.iterdir()):
                raise StoreError(f"{path} is not empty and not a cowfs store; refusing to put a store there "
                                 "(choose an empty or new directory)")
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        check_safe_location(path)
        os.chmod(path, 0o700)
        # index.lmdb made here: LMDB would create it with the files' mode (0600, not enterable).
        for sub in ("packs", "logs", "locks", "index.lmdb"):
            (path / sub).mkdir(mode=0o700, exist_ok=True)
        index = Index(path / "index.lmdb")
        index.write(lambda txn: cls._create_root(index, txn))
        index.sync()
        for directory in (path / "index.lmdb", path / "packs", path, path.parent):
            sync_directory(directory)
        return cls(path, index, readonly=False)

    @staticmethod
    def _create_root(index: Index, txn: lmdb.Transaction) -> None:
        meta = index.db(DB_META)
        txn.put(b"format", FORMAT, db=meta)
        txn.put(b"next_inode", U64.pack(ROOT_INODE + 1), db=meta)
        txn.put(b"next_branch", U64.pack(2), db=meta)
        txn.put(b"next_snapshot", U64.pack(1), db=meta)
        txn.put(b"next_pack", U64.pack(1), db=meta)
        Store._put_root_branch(index, txn, BranchRecord(1, MAIN_BRANCH, FIRST_EPOCH, None, time.time()))

    @staticmethod
    def _put_root_branch(index: Index, txn: lmdb.Transaction, branch: BranchRecord) -> None:
        """A branch without a parent, holding an empty root directory."""
        now = time.time_ns()
        root = InodeAttrs(stat.S_IFDIR | 0o755, os.getuid(), os.getgid(), 2, 0, now, now, now)
        txn.put(U32.pack(branch.id), branch.encode(), db=index.db(DB_BRANCHES))
        txn.put(branch.name.encode(), U32.pack(branch.id), db=index.db(DB_BRANCH_NAMES))
        versions.put(txn, index.db(DB_INODES), branch.id, FIRST_EPOCH, ROOT_INODE, b"", root.encode())

    def _free_branch_name(self, txn: lmdb.Transaction, base: str) -> str:
        """``base``, or ``base-2``, ``base-3``... : the first no branch has."""
        names = self.index.db(DB_BRANCH_NAMES)
        chosen, n = base, 1
        while txn.get(chosen.encode(), db=names) is not None:
            n += 1
            chosen = f"{base}-{n}"
        return chosen

    def new_empty_branch(self, base_name: str) -> BranchRecord:
        """A new branch with nothing in common with the others (a pulled snapshot is built on
        one); named ``base_name``, or with a number added when that name is taken."""
        check_branch_name(base_name)

        def create(txn: lmdb.Transaction) -> BranchRecord:
            chosen = self._free_branch_name(txn, base_name)
            branch = BranchRecord(self._take(txn, b"next_branch"), chosen, FIRST_EPOCH, None, time.time())
            self._put_root_branch(self.index, txn, branch)
            return branch

        return self.index.write(create)

    @classmethod
    def open(cls, path: Path, *, readonly: bool = False) -> "Store":
        path = Path(path).absolute()
        if not path.exists():
            raise StoreError(f"no cowfs store at {path}: run `cowfs init` first, or pass --store / COWFS_STORE")
        check_safe_location(path)
        if not (path / "index.lmdb" / "data.mdb").is_file():
            raise StoreError(f"{path} is not a cowfs store (it has no index.lmdb); pass the directory that "
                             "`cowfs init` created")
        try:
            index = Index(path / "index.lmdb", readonly=readonly)
        except lmdb.Error as exc:
            raise StoreError(f"{path} is not a usable cowfs store: {exc}") from exc
        with index.reading() as txn:
            found = txn.get(b"format", db=index.db(DB_META))
        if found not in READABLE_FORMATS:
            index.close()
            raise StoreError(f"{path} is not a cowfs store of a format this version reads ({found!r})")
        if found != FORMAT and not readonly:
            index.write(lambda txn: txn.put(b"format", FORMAT, db=index.db(DB_META)))
        return cls(path, index, readonly=readonly)

    def close(self) -> None:
        self.close_pack()
        self.packs.close()
        self.index.close()

    # -- counters ----------------------------------------------------------------------------
    def _take(self, txn: lmdb.Transaction, counter: bytes, count: int = 1) -> int:
        meta = self.index.db(DB_META)
        first = _get_u64(txn, meta, counter)
        txn.put(counter, U64.pack(first + count), db=meta)
        return first

    def allocate_inodes(self, count: int) -> range:
        """Inode numbers are store-wide, so no two branches ever give one number two meanings."""
        first = self.index.write(lambda txn: self._take(txn, b"next_inode", count))
        return range(first, first + count)

    def stats(self) -> dict[str, int]:
        with self.index.reading() as txn:
            return {name: _get_u64(txn, self.index.db(DB_META), name.encode()) for name in STATS}

    # -- branches ----------------------------------------------------------------------------
    def branch(self, txn: lmdb.Transaction, branch_id: int) -> BranchRecord:
        raw = txn.get(U32.pack(branch_id), db=self.index.db(DB_BRANCHES))
        if raw is None:
            raise StoreError(f"branch {branch_id} does not exist in {self.path}")
        return BranchRecord.decode(raw)

    def put_branch(self, txn: lmdb.Transaction, branch: BranchRecord) -> None:
        txn.put(U32.pack(branch.id), branch.encode(), db=self.index.db(DB_BRANCHES))

    def branch_named(self, name: str) -> BranchRecord:
        with self.index.reading() as txn:
            raw = txn.get(name.encode(), db=self.index.db(DB_BRANCH_NAMES))
            if raw is None:
                raise StoreError(f"no branch named {name!r}; `cowfs status` lists the branches")
            return self.branch(txn, U32.unpack(raw)[0])

    def branches(self) -> list[BranchRecord]:
        with self.index.reading() as txn:
            return [BranchRecord.decode(v) for _, v in txn.cursor(db=self.index.db(DB_BRANCHES))]

    def fork(self, snapshot: SnapshotRecord, name: str | None = None) -> BranchRecord:
        """A new branch that starts as ``snapshot`` and leaves it untouched: O(1)."""
        names = self.index.db(DB_BRANCH_NAMES)

        if name is not None:
            check_branch_name(name)

        def create(txn: lmdb.Transaction) -> BranchRecord:
            chosen = name
            if chosen is None:
                chosen = self._free_branch_name(txn, f"from-{snapshot.id}")
            elif txn.get(chosen.encode(), db=names) is not None:
                raise StoreError(f"a branch named {chosen!r} exists already; choose another --branch name")
            branch = BranchRecord(self._take(txn, b"next_branch"), chosen, FIRST_EPOCH,
                                  (snapshot.branch, snapshot.epoch), time.time(), snapshot.name)
            self.put_branch(txn, branch)
            txn.put(chosen.encode(), U32.pack(branch.id), db=names)
            return branch

        return self.index.write(create)

    def view(self, txn: lmdb.Transaction, branch_id: int, epoch: int | None = None) -> View:
        """The ancestry chain a reader of ``branch_id`` at ``epoch`` (default: head) walks."""
        branch = self.branch(txn, branch_id)
        chain = [(branch.id, branch.head if epoch is None else epoch)]
        while branch.parent is not None:
            chain.append(branch.parent)
            branch = self.branch(txn, branch.parent[0])
        return tuple(chain)

    def lock_branch(self, branch: BranchRecord, holder: str) -> int:
        """One daemon serves a branch at a time; the lock dies with its process."""
        path = self.path / "locks" / f"branch-{branch.id}"
        fd = open_private(path, os.O_RDWR | os.O_CREAT)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            held_by = os.pread(fd, 4096, 0).decode(errors="replace").strip()
            os.close(fd)
            raise StoreError(f"branch {branch.name!r} is already mounted ({held_by}); "
                             "unmount it first or mount a snapshot of it as a new branch") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, holder.encode(), 0)
        return fd

    # -- snapshots ---------------------------------------------------------------------------
    def take_snapshot_ids(self, txn: lmdb.Transaction, count: int = 1) -> range:
        """Snapshot numbers are store-wide and handed out in order, so ``@N`` sorts by age."""
        first = self._take(txn, b"next_snapshot", count)
        return range(first, first + count)

    def give_back_snapshot_ids(self, txn: lmdb.Transaction, ids: range) -> None:
        """Numbers reserved and never used go back if no one took any after them: a daemon that
        exits leaves no gap in the numbering (it may after a crash, or beside another daemon)."""
        meta = self.index.db(DB_META)
        if ids and _get_u64(txn, meta, b"next_snapshot") == ids.stop:
            txn.put(b"next_snapshot", U64.pack(ids.start), db=meta)

    def list_snapshot(self, txn: lmdb.Transaction, record: SnapshotRecord) -> SnapshotRecord:
        """Write a snapshot record. One that closes its branch's head epoch (not ``same_as`` an
        earlier one) also opens the next and takes over the bytes the closed epoch added so far:
        two small records, nothing more, whatever the size of the workspace."""
        if record.same_as is None:
            branch = self.branch(txn, record.branch)
            assert branch.head == record.epoch, "another process moved this branch's head"
            record = replace(record, bytes_added=branch.bytes_since_snapshot)
            self.put_branch(txn, replace(branch, head=branch.head + 1, bytes_since_snapshot=0))
        self.put_snapshot(txn, record)
        return record

    def put_snapshot(self, txn: lmdb.Transaction, record: SnapshotRecord) -> None:
        txn.put(str(record.id).encode(), record.encode(), db=self.index.db(DB_SNAPSHOTS))

    def snapshots_version(self) -> tuple[int, int]:
        """Changes whenever any snapshot record may have: LMDB's last transaction id, which
        every write moves, and the index file's inode, which a store made again at the same
        path changes. A cache of the log keyed by it is never stale."""
        return self.index.env.info()["last_txnid"], os.stat(self.path / "index.lmdb" / "data.mdb").st_ino

    def snapshots(self, decoded: dict[bytes, SnapshotRecord] | None = None) -> list[SnapshotRecord]:
        """Every snapshot, oldest first. A poller passes ``decoded`` (raw record to record) to
        decode only records that are new or changed since its last call; it is updated in place."""
        if decoded is None:
            with self.index.reading() as txn:
                records = [SnapshotRecord.decode(v) for _, v in txn.cursor(db=self.index.db(DB_SNAPSHOTS))]
            return sorted(records, key=lambda r: r.id)
        with self.index.reading() as txn:
            raws = [bytes(v) for _, v in txn.cursor(db=self.index.db(DB_SNAPSHOTS))]
        fresh = {raw: decoded.get(raw) or SnapshotRecord.decode(raw) for raw in raws}
        decoded.clear()
        decoded.update(fresh)
        return sorted(fresh.values(), key=lambda r: r.id)

    def snapshot_in(self, txn: lmdb.Transaction, snapshot_id: int) -> SnapshotRecord | None:
        raw = txn.get(str(snapshot_id).encode(), db=self.index.db(DB_SNAPSHOTS))
        return SnapshotRecord.decode(raw) if raw else None

    def snapshot(self, snapshot_id: int) -> SnapshotRecord | None:
        with self.index.reading() as txn:
            return self.snapshot_in(txn, snapshot_id)

    def resolve_snapshot(self, ref: str) -> SnapshotRecord:
        """An id (``@12`` or ``12``), else a label, else a unique label prefix."""
        ref = ref.strip()
        number = ref[1:] if ref.startswith("@") else ref
        if number.isdigit():
            found = self.snapshot(int(number))
            if found is not None:
                return found
        records = self.snapshots()
        exact = [r for r in records if r.label == ref]
        if exact:
            return exact[-1]
        prefixed = [r for r in records if r.label.startswith(ref)] if ref else []
        if len({r.label for r in prefixed}) == 1:
            return prefixed[-1]
        if prefixed:
            labels = ", ".join(sorted({r.label for r in prefixed})[:5])
            raise StoreError(f"{ref!r} matches several snapshot labels ({labels}); give more of the label or an id")
        raise StoreError(f"no snapshot {ref!r} in {self.path}; `cowfs log` lists snapshots by id and label")

    # -- chunks ------------------------------------------------------------------------------
    def pack_writer(self, txn: lmdb.Transaction) -> PackWriter:
        """This process's pack; a new pack id is taken inside the caller's transaction."""
        if not self.pack_has_room:
            if self._writer is not None:
                self._writer.close()
            pack_id = self._take(txn, b"next_pack")
            self._writer = PackWriter(self.path / "packs", pack_id)
        return self._writer

    def close_pack(self) -> None:
        """Finish this process's pack; the next chunk starts a new one."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    @property
    def appending_pack(self) -> int | None:
        """The pack this process appends to now, if one is open. Pack ids are never reused:
        the same id later means the same pack, still open and locked."""
        return self._writer.pack_id if self._writer is not None else None

    @property
    def pack_has_room(self) -> bool:
        """Whether workers may append now without ``ensure_pack_writer`` rotating the pack."""
        return self._writer is not None and not self._writer.full

    def ensure_pack_writer(self) -> None:
        """Open (or rotate) this process's pack before worker threads append to it."""
        if not self.pack_has_room:
            self.index.write(self.pack_writer)

    def write_chunks(self, sealed: list[SealedChunk]) -> dict[bytes, ChunkLocation]:
        """Append chunks the index did not know when the caller looked (``seal_blocks``, once
        per batch); safe in a worker thread.

        Only the transaction that indexes them makes them part of the store; until then they
        are unreferenced bytes (a crash leaves them for gc). One that another commit indexed
        meanwhile is indexed once (``add_chunks``); its bytes here are left for gc."""
        return dict(zip((chunk.digest for chunk in sealed), self.append_chunks(sealed)))

    def append_chunks(self, chunks: list[SealedChunk]) -> list[ChunkLocation]:
        """Append to this process's pack as they are; safe in a worker thread."""
        assert self._writer is not None, "call ensure_pack_writer first"
        return self._writer.append_many(chunks)

    def note_uncompressed(self, txn: lmdb.Transaction, packs: Iterable[int]) -> None:
        """Record packs that hold chunks stored raw only to keep up, for fs/recompress.py."""
        table = self.index.db(DB_UNCOMPRESSED_PACKS)
        for pack in packs:
            txn.put(U32.pack(pack), b"", db=table)

    def uncompressed_packs(self) -> list[int]:
        table = self.index.dbs.get(DB_UNCOMPRESSED_PACKS)
        if table is None:
            return []
        with self.index.reading() as txn:
            return [U32.unpack(key)[0] for key, _ in txn.cursor(db=table)]

    def forget_uncompressed(self, pack_id: int) -> None:
        table = self.index.db(DB_UNCOMPRESSED_PACKS)
        self.index.write(lambda txn: txn.delete(U32.pack(pack_id), db=table))

    def add_chunks(self, txn: lmdb.Transaction, sealed: Iterable[SealedChunk],
                   written: dict[bytes, ChunkLocation] | None = None) -> int:
        """Index the chunks not indexed yet (appending those no worker wrote); returns the
        compressed bytes this added."""
        chunks, meta = self.index.db(DB_CHUNKS), self.index.db(DB_META)
        recent_refs = self.index.db(DB_RECENT_REFS)
        written = written or {}
        added_stored = added_raw = added_count = logical = 0
        gc_round = _get_u64(txn, meta, b"gc_round")
        for chunk in sealed:
            logical += chunk.raw_len
            if txn.get(chunk.digest, db=chunks) is not None:
                if gc_round:  # a collection may be deciding this chunk's fate: tell it
                    txn.put(chunk.digest, U64.pack(gc_round), db=recent_refs)
                continue
            location = written.get(chunk.digest) or self.pack_writer(txn).append(chunk)
            txn.put(chunk.digest, location.encode(), db=chunks)
            added_stored += location.stored_len
            added_raw += chunk.raw_len
            added_count += 1
        if added_count:
            self.sync_packs()  # a no-op when the flusher synced them before this transaction
        for name, delta in (("chunk_count", added_count), ("chunk_raw_bytes", added_raw),
                            ("chunk_stored_bytes", added_stored), ("logical_bytes", logical)):
            if delta:
                bump_stat(txn, meta, name.encode(), delta)
        return added_stored

    def read_chunk(self, txn: lmdb.Transaction, digest: bytes) -> bytes:
        return self.read_chunks(txn, [digest])[0]

    def read_chunks(self, txn: lmdb.Transaction, digests: Sequence[bytes]) -> list[bytes]:
        """The chunks' bytes, verified. Those in packs are read, decompressed and checked on
        all cores at once (``map_shared``): a cold 1 MiB read is eight chunks, and one core
        decompresses text at ~1 GB/s, which made it the wall of a cold sequential read. Each
        chunk is also read by the thread that checks it: the copy out of the page cache costs
        a core as much as the hash (cold read of random bytes, A/B: 822 -> 970 MB/s). Packs
        are opened here first, since opening is where a gc that moved a chunk shows."""
        found: dict[bytes, bytes] = {}
        stored: list[tuple[bytes, ChunkLocation]] = []
        table = self.index.db(DB_CHUNKS)
        for digest in dict.fromkeys(digests):
            cached = self.chunk_cache.get(digest)
            if cached is not None:
                found[digest] = cached
                continue
            raw = txn.get(digest, db=table)
            if raw is None:
                found[digest] = self._read_remote_chunk(txn, digest)
            else:
                stored.append(self._opened(digest, ChunkLocation.decode(raw)))
        for (digest, _), data in zip(stored, map_shared(self._read_stored, stored)):
            self.chunk_cache.put(digest, data)
            found[digest] = data
        return [found[digest] for digest in digests]

    def _read_stored(self, stored: tuple[bytes, ChunkLocation]) -> bytes:
        digest, location = stored
        return unseal_stored(digest, self.packs.read(location), location)

    def _opened(self, digest: bytes, location: ChunkLocation) -> tuple[bytes, ChunkLocation]:
        """Where the chunk is, with its pack open for reading (not safe in helper threads)."""
        try:
            self.packs.open(location.pack)
            return digest, location
        except PackMissingError:
            # gc may have moved the chunk to a new pack after this transaction began
            with self.index.reading() as fresh:
                raw = fresh.get(digest, db=self.index.db(DB_CHUNKS))
            if raw is None or ChunkLocation.decode(raw) == location:
                raise
            location = ChunkLocation.decode(raw)
            self.packs.open(location.pack)
            return digest, location

    # -- chunks of lazily mounted remote snapshots ------------------------------------------------
    def has_chunk(self, txn: lmdb.Transaction, digest: bytes) -> bool:
        return txn.get(digest, db=self.index.db(DB_CHUNKS)) is not None

    def remote_chunk(self, txn: lmdb.Transaction, digest: bytes) -> RemoteChunk | None:
        table = self.index.dbs.get(DB_REMOTE_CHUNKS)
        raw = txn.get(digest, db=table) if table is not None else None
        return RemoteChunk.decode(raw) if raw is not None else None

    def has_remote_chunks(self) -> bool:
        table = self.index.dbs.get(DB_REMOTE_CHUNKS)
        with self.index.reading() as txn:
            return table is not None and txn.stat(table)["entries"] > 0

    def put_remote_chunks(self, txn: lmdb.Transaction, chunks: Iterable[tuple[bytes, RemoteChunk]]) -> None:
        table = self.index.db(DB_REMOTE_CHUNKS)
        for digest, where in chunks:
            txn.put(digest, where.encode(), db=table)

    def remote_cache(self, remote: str) -> ChunkCache:
        cache = self._remote_caches.get(remote)
        if cache is None:
            check_branch_name(remote)  # remote names are checked when added; never a path
            cache = ChunkCache(self.path / "remote-cache" / remote / "chunks", self.remote_cache_limit)
            self._remote_caches[remote] = cache
        return cache

    def _read_remote_chunk(self, txn: lmdb.Transaction, digest: bytes) -> bytes:
        where = self.remote_chunk(txn, digest)
        if where is None:
            raise CorruptChunkError(f"chunk {digest.hex()[:16]} is referenced but not in the chunk index")
        cache = self.remote_cache(where.remote)
        payload = cache.get(digest)
        if payload is None and self.fetch_remote is not None:
            self.fetch_remote([(digest, where)])
            cached = self.chunk_cache.get(digest)
            if cached is not None:
                return cached
            payload = cache.get(digest)
        if payload is None:
            raise RemoteChunkNeeded(digest, where)
        try:
            data = unseal(digest, payload, where.location.raw_len, f"the cache of remote {where.remote}")
        except CorruptChunkError:  # the cache file was damaged here; the remote's copy may be fine
            cache.discard(digest)
            raise RemoteChunkNeeded(digest, where) from None
        self.chunk_cache.put(digest, data)
        return data

    def flag_damage(self, report: str) -> None:
        """Leave a note that the store needs `cowfs fsck`, which `cowfs status` shows."""
        fd = open_private(self.path / NEEDS_FSCK, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        with open(fd, "a", encoding="utf-8") as note:
            note.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {report}\n")

    def sync_packs(self) -> None:
        """Make appended chunks durable. Every transaction that indexes chunks does this before
        it commits: LMDB pages may reach the disk before a later fsync, pack bytes must not lag."""
        if self._writer is not None:
            self._writer.sync()

    def sync(self) -> None:
        """Packs first, then the index, so the index never points at bytes a crash could lose."""
        self.sync_packs()
        self.index.sync()


def check_safe_location(path: Path) -> None:
    """Use a store only where nobody else could have changed it, as OpenSSH checks ~/.ssh: the
    store and every directory above it belong to the caller or root, and none of them is
    writable by others (a sticky directory such as /tmp is fine: others cannot replace what
    is ours in it). Otherwise root running `cowfs --store ~user/st` would follow whatever
    links that user planted in it."""
    uid = os.getuid()
    current = Path(path)
    while True:
        try:
            info = current.lstat()
        except OSError as exc:
            raise StoreError(f"cannot check {current}: {exc.strerror}") from None
        if stat.S_ISLNK(info.st_mode):
            info = current.stat()  # a link to the store or above it: judge where it leads
        if info.st_uid not in (uid, 0):
            raise StoreError(f"{current} belongs to uid {info.st_uid}, not to you: cowfs uses only stores that "
                             "you (or root) own all the way up; copy the store, or run cowfs as its owner")
        if stat.S_IMODE(info.st_mode) & 0o022 and not info.st_mode & stat.S_ISVTX:
            raise StoreError(f"{current} is writable by others (mode {stat.S_IMODE(info.st_mode):o}), so anyone "
                             f"could change the store below it; `chmod go-w {current}` or move the store")
        if current.parent == current:
            return
        current = current.parent


def open_private(path: Path, flags: int) -> int:
    """Open a file of the store, never through a symlink (a planted one is an error)."""
    try:
        return os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise StoreError(f"{path} is a symbolic link; a store never holds one (someone planted it?): "
                             "remove it and run `cowfs fsck`") from None
        raise


BRANCH_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def check_branch_name(name: str) -> None:
    """Branch names become file names (logs, locks): names, never paths."""
    if not BRANCH_NAME.fullmatch(name) or ".." in name:
        raise StoreError(f"{name!r} is not a usable branch name: use 1 to 64 letters, digits, '.', '_' or '-', "
                         "starting with a letter or digit (no '/' and no '..')")


def describe(record: SnapshotRecord) -> dict:
    """The JSON shape of a snapshot that the CLI and the control socket print."""
    return {"id": record.name, "branch": record.branch, "epoch": record.epoch, "time": record.created,
            "label": record.label, "meta": record.meta, "bytes_added": record.bytes_added,
            "durable": record.durable, "pinned": record.pinned,
            "same_as": format_snapshot_id(record.same_as) if record.same_as else None,
            "changed_count": record.changed_count}


def unseal_stored(digest: bytes, payload: bytes, location: ChunkLocation) -> bytes:
    """A chunk's bytes from the payload its pack holds, verified; an error names the pack."""
    return unseal(digest, payload, location.raw_len, f"pack {location.pack}")
