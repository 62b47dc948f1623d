"""Snapshots shared through S3-compatible object storage: push, pull, list.

Layout under ``s3://bucket/prefix`` (docs/remotes.md), immutable, content-named objects only:

    packs/<blake3 of the pack>.pack    chunk records as in local packs, about 16 MiB each
    index/<same name>.json             the chunks of that pack: digest, offset, lengths
    snapshots/<snapshot id>.json       the commit point: label, meta, root tree digest

A pack goes up before its index, and every index before the snapshot that needs it, so a reader
never sees a snapshot whose data is not all there. No key is ever written twice.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

from cowfs.fs.chunks import SealedChunk, digest_of, seal
from cowfs.fs.errors import CorruptChunkError, StoreError
from cowfs.fs.history import is_durable
from cowfs.fs.keys import DB_CHUNKS
from cowfs.fs.packs import HEADER, record_header
from cowfs.fs.progress import Progress, silent
from cowfs.fs.remote.bucket import Bucket, RemoteConfig
from cowfs.fs.remote.transfer import fetch_verified
from cowfs.fs.records import ChunkLocation, RemoteChunk, SnapshotRecord
from cowfs.fs.store import Store, open_private
from cowfs.fs.tree import Tree
from cowfs.fs.treeobjects import materialize, snapshot_objects, tree_digests

PACK_TARGET = 16 << 20
REPACK_BELOW_LIVE = 0.5  # a pack less than half alive is rewritten by `remote gc`


# -- identity ------------------------------------------------------------------------------------
def store_id(store: Store) -> str:
    """A name for this store that no other store has: snapshots keep it across machines."""
    path = store.path / "store-id"
    if not path.exists():
        with os.fdopen(open_private(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL), "w") as handle:
            handle.write(uuid.uuid4().hex)
    with os.fdopen(open_private(path, os.O_RDONLY)) as handle:
        return handle.read().strip()


def global_id(store: Store, record: SnapshotRecord) -> str:
    return record.meta.get("remote_id") or f"{store_id(store)[:12]}-{record.id}"


# -- what the remote holds -------------------------------------------------------------------------
@dataclass
class RemoteIndex:
    chunks: dict[bytes, tuple[str, ChunkLocation]] = field(default_factory=dict)

    def where(self, digest: bytes) -> tuple[str, ChunkLocation]:
        """The pack holding a chunk a remote snapshot names, or why the remote is damaged."""
        if digest not in self.chunks:
            raise StoreError(f"the remote's snapshot needs chunk {digest.hex()[:16]}, which no index of the "
                             "remote lists; the remote is damaged (was a pack deleted by hand?)")
        return self.chunks[digest]

    @classmethod
    def load(cls, bucket: Bucket, cache: Path | None = None) -> "RemoteIndex":
        """Every index of the remote. Index objects never change (named by their pack's hash),
        so with a ``cache`` directory each is downloaded once; one gc deleted is dropped."""
        index = cls()
        names = bucket.names("index")
        if cache is not None:
            cache.mkdir(mode=0o700, parents=True, exist_ok=True)
            for stale in set(os.listdir(cache)) - set(names):
                (cache / stale).unlink()
        for name in names:
            cached = cache / name if cache is not None else None
            if cached is not None and cached.exists():
                with os.fdopen(open_private(cached, os.O_RDONLY), "rb") as handle:
                    raw = handle.read()
            else:
                raw = bucket.get("index", name)
                if cached is not None:
                    with os.fdopen(open_private(cached, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), "wb") as handle:
                        handle.write(raw)
            document = json.loads(raw)
            for digest, offset, stored_len, raw_len in document["chunks"]:
                index.chunks[bytes.fromhex(digest)] = (document["pack"], ChunkLocation(0, offset, stored_len, raw_len))
        return index


def index_cache(store: Store, bucket: Bucket) -> Path:
    return store.path / "remote-cache" / bucket.name / "index"


def remote_snapshots(bucket: Bucket) -> list[dict]:
    found = [json.loads(bucket.get("snapshots", name)) for name in bucket.names("snapshots")]
    return sorted(found, key=lambda s: (s["created"], s["id"]))


def resolve_remote(snapshots: list[dict], ref: str) -> dict:
    for test in (lambda s: s["id"] == ref, lambda s: s["label"] == ref):
        matches = [s for s in snapshots if test(s)]
        if matches:
            return matches[-1]
    matches = [s for s in snapshots if s["id"].startswith(ref) or (s["label"] and s["label"].startswith(ref))]
    if len(matches) == 1:
        return matches[0]
    if matches:
        raise StoreError(f"{ref!r} matches {len(matches)} remote snapshots; give more of its id or label")
    raise StoreError(f"no snapshot {ref!r} on the remote; `cowfs log --remote NAME` lists them")


# -- leases: pushes and gc never overlap ------------------------------------------------------------
LEASE_SECONDS = 3600.0  # a lease older than this belongs to a process that died


class Lease:
    """A push announces itself under ``leases/push-*``, a gc under ``leases/gc-*``, and only
    then looks for the other kind. With S3's read-after-write consistency at least one of two
    that start together sees the other and backs off, so gc never deletes a chunk that a push
    found on the remote (and did not upload again) before that push's snapshot lands."""

    def __init__(self, bucket: Bucket, kind: str) -> None:
        self.bucket, self.kind = bucket, kind
        self.name = f"{kind}-{uuid.uuid4().hex}.json"

    def __enter__(self) -> "Lease":
        other = "gc" if self.kind == "push" else "push"
        self.bucket.put_new("leases", self.name, json.dumps({"kind": self.kind, "host": os.uname().nodename,
                                                             "pid": os.getpid()}).encode())
        try:
            busy = [name for name, (age, _) in self.bucket.objects("leases").items()
                    if name.startswith(other + "-") and age < LEASE_SECONDS]
            if busy:
                raise StoreError(f"remote {self.bucket.name}: a {other} is running (lease {busy[0]}); "
                                 f"try again when it is done (a lease of a dead process expires after "
                                 f"{LEASE_SECONDS / 60:.0f} minutes)")
        except BaseException:
            self.bucket.delete("leases", self.name)
            raise
        return self

    def __exit__(self, *_: object) -> None:
        self.bucket.delete("leases", self.name)


# -- push ------------------------------------------------------------------------------------------
class PackUploader:
    """Gathers chunk records into packs of about PACK_TARGET bytes; each pack is uploaded, then
    its index, so the remote never indexes bytes it does not hold."""

    def __init__(self, bucket: Bucket, index: RemoteIndex) -> None:
        self.bucket, self.index = bucket, index
        self.records: list[bytes] = []
        self.entries: list[tuple[bytes, int, int, int]] = []
        self.size = 0
        self.chunks_sent = 0

    def add(self, digest: bytes, payload: bytes, raw_len: int) -> None:
        if digest in self.index.chunks:  # on the remote, or already in this pack
            return
        self.records.append(record_header(digest, raw_len, len(payload)))
        self.records.append(payload)
        self.entries.append((digest, self.size + HEADER.size, len(payload), raw_len))
        self.size += HEADER.size + len(payload)
        self.index.chunks[digest] = ("", ChunkLocation(0, 0, len(payload), raw_len))  # pending
        if self.size >= PACK_TARGET:
            self.finish()

    def finish(self) -> None:
        if not self.entries:
            return
        body = b"".join(self.records)
        name = digest_of(body).hex()
        self.bucket.put_new("packs", f"{name}.pack", body)
        index = {"pack": f"{name}.pack", "chunks": [[d.hex(), o, s, r] for d, o, s, r in self.entries]}
        self.bucket.put_new("index", f"{name}.json", json.dumps(index).encode())
        for digest, offset, stored_len, raw_len in self.entries:
            self.index.chunks[digest] = (f"{name}.pack", ChunkLocation(0, offset, stored_len, raw_len))
        self.chunks_sent += len(self.entries)
        self.records, self.entries, self.size = [], [], 0


@dataclass
class PushReport:
    remote: str
    pushed: list[str] = field(default_factory=list)
    already_there: list[str] = field(default_factory=list)
    chunks_sent: int = 0
    bytes_uploaded: int = 0
    requests: int = 0
    seconds: float = 0.0


def push(store: Store, config: RemoteConfig, records: Iterable[SnapshotRecord],
         progress: Progress = silent) -> PushReport:
    started = time.monotonic()
    bucket = Bucket(config)
    with Lease(bucket, "push"):
        report = _push(store, bucket, records, progress)
    report.bytes_uploaded, report.requests = bucket.traffic.uploaded, bucket.traffic.requests
    report.seconds = round(time.monotonic() - started, 3)
    return report


def _push(store: Store, bucket: Bucket, records: Iterable[SnapshotRecord], progress: Progress) -> PushReport:
    report = PushReport(bucket.name)
    there = {name.removesuffix(".json") for name in bucket.names("snapshots")}
    index = RemoteIndex.load(bucket, index_cache(store, bucket))
    uploader = PackUploader(bucket, index)
    chunks_db = store.index.db(DB_CHUNKS)
    for record in records:
        name = global_id(store, record)
        if name in there:
            report.already_there.append(record.name)
            continue
        if not is_durable(store, record):
            raise StoreError(f"snapshot {record.name} is not durable yet; `cowfs snap --wait` or wait a moment")
        progress(f"pushing {record.name}", 0, 0)
        objects = snapshot_objects(Tree.at_snapshot(store, record))
        missing = [d for d in objects.data if d not in index.chunks]  # in file order: see SnapshotObjects
        for done, digest in enumerate(missing):
            progress(f"pushing {record.name}: chunks", done, len(missing))
            with store.index.reading() as txn:
                raw = txn.get(digest, db=chunks_db)
                if raw is None:  # a lazily pulled chunk from another remote: fetched, sealed again
                    sealed = seal(store.read_chunk(txn, digest), digest)
                    uploader.add(digest, sealed.payload, sealed.raw_len)
                    continue
            location = ChunkLocation.decode(raw)
            payload = store.packs.read(location)
            if location.stored_len == location.raw_len:  # noise, or stored raw to keep up and not compressed yet
                sealed = seal(payload, digest)
                payload = sealed.payload
            uploader.add(digest, payload, location.raw_len)
        for digest, sealed in objects.trees.items():
            uploader.add(digest, sealed.payload, sealed.raw_len)
        uploader.finish()
        document = {"id": name, "label": record.label, "meta": record.meta, "created": record.created,
                    "root": objects.root.hex(), "source": {"store": store_id(store), "snapshot": record.name},
                    "format": 1}
        bucket.put_new("snapshots", f"{name}.json", json.dumps(document).encode())  # the commit point
        there.add(name)
        report.pushed.append(record.name)
    report.chunks_sent = uploader.chunks_sent
    return report


# -- pull ------------------------------------------------------------------------------------------
@dataclass
class PullReport:
    remote: str
    snapshot: str = ""
    local_snapshot: str = ""
    branch: str = ""
    files: int = 0
    chunks_fetched: int = 0
    chunks_left_remote: int = 0  # a lazy pull: fetched when read
    bytes_downloaded: int = 0
    requests: int = 0
    seconds: float = 0.0


def fetch_chunks(bucket: Bucket, index: RemoteIndex,
                 digests: Iterable[bytes]) -> Iterator[tuple[SealedChunk, bytes]]:
    """Download chunks the remote's indexes list (adjacent ones of a pack together), verified."""
    return fetch_verified(bucket, [(digest, *index.where(digest)) for digest in digests])


def tree_reader(bucket: Bucket, index: RemoteIndex) -> Callable[[bytes], bytes]:
    """Tree objects by digest, each downloaded once."""
    trees: dict[bytes, bytes] = {}

    def fetch_tree(digest: bytes) -> bytes:
        if digest not in trees:
            trees[digest] = next(fetch_chunks(bucket, index, [digest]))[1]
        return trees[digest]

    return fetch_tree


def pull(store: Store, config: RemoteConfig, ref: str, progress: Progress = silent, *,
         lazy: bool = False) -> PullReport:
    """Make a remote snapshot a local one on a branch of its own. A lazy pull fetches only its
    tree objects: the data chunks this store lacks are listed as remote chunks, and reading
    them fetches them into the bounded cache (docs/remotes.md, "Lazy mounts"). A full pull of
    a snapshot pulled lazily before brings the chunks it still lacks into the store."""
    started = time.monotonic()
    bucket = Bucket(config)
    document = resolve_remote(remote_snapshots(bucket), ref)
    report = PullReport(config.name, snapshot=document["id"])
    here = next((r for r in store.snapshots() if r.meta.get("remote_id") == document["id"]), None)
    if here is not None and (lazy or not here.meta.get("lazy")):
        if lazy:  # mounting it again: a new branch on the snapshot this store has
            report.local_snapshot = here.name
            return report
        raise StoreError(f"snapshot {document['id']} is here already, as {here.name}; "
                         f"`cowfs mount {here.name} DIR` opens it")
    index = RemoteIndex.load(bucket, index_cache(store, bucket))
    fetch_tree = tree_reader(bucket, index)
    needed = {digest for kind, digest in tree_digests(bytes.fromhex(document["root"]), fetch_tree) if kind == "data"}
    with store.index.reading() as txn:
        missing = sorted(d for d in needed if not store.has_chunk(txn, d))
    if lazy:
        _list_remote_chunks(store, config.name, index, missing)
        report.chunks_left_remote = len(missing)
    else:
        _fetch_into_store(store, bucket, index, missing, document["id"], progress)
        report.chunks_fetched = len(missing)
    if here is not None:  # it was pulled lazily: now every chunk is in the store, it reads offline
        report.local_snapshot = here.name
        return _counted(report, bucket, started)
    branch = store.new_empty_branch(f"{config.name}-{document['source']['snapshot'].lstrip('@')}")
    tree = Tree(store, branch.id)
    progress(f"pulling {document['id']}: files", 0, 0)
    report.files = materialize(tree, bytes.fromhex(document["root"]), fetch_tree)
    tree.flush()
    meta = {key: value for key, value in document["meta"].items() if key != "changed_paths"}  # of its source
    meta |= {"remote_id": document["id"], "remote": config.name, "pulled_from": document["source"]}
    if lazy:
        meta["lazy"] = True
    tree.snapshot(document["label"], meta)
    tree.flush()
    tree.give_back_snapshot_ids()
    store.sync()
    report.local_snapshot = next(r.name for r in store.snapshots() if r.meta.get("remote_id") == document["id"])
    report.branch = branch.name
    return _counted(report, bucket, started)


def _counted(report: PullReport, bucket: Bucket, started: float) -> PullReport:
    report.bytes_downloaded, report.requests = bucket.traffic.downloaded, bucket.traffic.requests
    report.seconds = round(time.monotonic() - started, 3)
    return report


def _fetch_into_store(store: Store, bucket: Bucket, index: RemoteIndex, missing: list[bytes], name: str,
                      progress: Progress) -> None:
    """Store the missing chunks as they came (verified), in transactions of about a pack."""
    batch: list[SealedChunk] = []
    try:
        for done, (chunk, _) in enumerate(fetch_chunks(bucket, index, missing)):
            progress(f"pulling {name}: chunks", done, len(missing))
            batch.append(chunk)
            if sum(c.raw_len for c in batch) >= PACK_TARGET:
                store.index.write(lambda txn, part=batch: store.add_chunks(txn, part))
                batch = []
    except CorruptChunkError as exc:
        raise StoreError(f"cannot pull {name}: {exc.strerror}, so the remote's copy is damaged; "
                         "no snapshot was added to this store") from None
    if batch:
        store.index.write(lambda txn: store.add_chunks(txn, batch))


def _list_remote_chunks(store: Store, remote: str, index: RemoteIndex, missing: list[bytes]) -> None:
    where = [(digest, RemoteChunk(remote, *index.where(digest))) for digest in missing]
    store.index.write(lambda txn: store.put_remote_chunks(txn, where))


# -- forgetting and reclaiming ---------------------------------------------------------------------
def forget(config: RemoteConfig, refs: Iterable[str]) -> list[str]:
    """Delete snapshot records (their chunks go at the next `remote gc`)."""
    bucket = Bucket(config)
    snapshots = remote_snapshots(bucket)
    chosen = [resolve_remote(snapshots, ref)["id"] for ref in refs]
    for name in chosen:
        bucket.delete("snapshots", f"{name}.json")
    return chosen


@dataclass
class RemoteGcReport:
    remote: str
    snapshots: int = 0
    packs_deleted: int = 0
    packs_rewritten: int = 0
    bytes_freed: int = 0
    packs_kept_young: int = 0
    dry_run: bool = False


def collect_remote_garbage(config: RemoteConfig, grace_seconds: float, dry_run: bool = False,
                           progress: Progress = silent) -> RemoteGcReport:
    """Delete the packs no remote snapshot needs, and rewrite those less than half alive (their
    live chunks go to a new pack first). Packs younger than the grace period stay: a push uploads
    its packs before its snapshot record, and they are unreferenced until then."""
    bucket = Bucket(config)
    report = RemoteGcReport(config.name, dry_run=dry_run)
    with Lease(bucket, "gc"):
        snapshots = remote_snapshots(bucket)
        report.snapshots = len(snapshots)
        index = RemoteIndex.load(bucket)
        fetch_tree = tree_reader(bucket, index)
        live: set[bytes] = set()
        for done, snapshot in enumerate(snapshots):
            progress("walking remote snapshots", done, len(snapshots))
            live.update(digest for _, digest in tree_digests(bytes.fromhex(snapshot["root"]), fetch_tree))
        packs: dict[str, set[bytes]] = {}
        for digest, (pack, _) in index.chunks.items():
            packs.setdefault(pack, set()).add(digest)
        stored = bucket.objects("packs")
        uploader = PackUploader(bucket, RemoteIndex())
        for pack, digests in packs.items():
            age, size = stored.get(pack, (0.0, 0))
            kept = digests & live
            live_bytes = sum(index.chunks[d][1].stored_len for d in kept)
            if kept and live_bytes >= REPACK_BELOW_LIVE * size:
                continue
            if age < grace_seconds:
                report.packs_kept_young += 1
                continue
            report.packs_deleted += 1
            report.bytes_freed += size - live_bytes
            if dry_run:
                continue
            if kept:  # the live chunks move to a new pack, indexed, before the old one goes
                for chunk, _ in fetch_chunks(bucket, index, sorted(kept)):
                    uploader.add(chunk.digest, chunk.payload, chunk.raw_len)
                uploader.finish()
                report.packs_rewritten += 1
            # the index first: no new reader may count on the pack
            bucket.delete("index", pack.removesuffix(".pack") + ".json")
            bucket.delete("packs", pack)
    return report
