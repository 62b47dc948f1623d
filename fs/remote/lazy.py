"""Reading a lazily pulled snapshot: its chunks stay on the remote until a read needs them.

``download`` is the one way such chunks arrive: grouped into ranged GETs, verified, then kept in
the store's bounded cache. The daemon calls it in a worker thread when a request meets a chunk
it lacks; the CLI installs it as the store's ``fetch_remote`` so that `cowfs diff`, `push` to
another remote or a full `pull` of the snapshot read such files like any other.
"""

from __future__ import annotations

from cowfs.fs.errors import CorruptChunkError
from cowfs.fs.records import RemoteChunk
from cowfs.fs.remote.bucket import Bucket, remote_named
from cowfs.fs.remote.transfer import fetch_verified
from cowfs.fs.store import Store


class Buckets(dict):
    """One client per remote, made when first needed (making one costs ~0.1 s)."""

    def __init__(self, store: Store) -> None:
        super().__init__()
        self.store = store

    def __missing__(self, remote: str) -> Bucket:
        bucket = self[remote] = Bucket(remote_named(self.store, remote))
        return bucket


def download(store: Store, buckets: Buckets, wanted: list[tuple[bytes, RemoteChunk]],
             needed: bytes | None = None) -> bytes | None:
    """Fetch ``wanted`` into the cache and return the bytes of ``needed`` (one of them).

    A chunk that fails its hash check is never kept; it raises only when it is ``needed``
    (a damaged chunk met while reading ahead is for the read that reaches it to report).
    Network and credential failures raise ``StoreError`` with the remote's name."""
    by_remote: dict[str, list[tuple[bytes, str, object]]] = {}
    for digest, where in wanted:
        by_remote.setdefault(where.remote, []).append((digest, where.pack, where.location))
    found = None
    damaged: dict[bytes, CorruptChunkError] = {}
    for remote, chunks in by_remote.items():
        cache = store.remote_cache(remote)
        for sealed, data in fetch_verified(buckets[remote], chunks, damaged):
            cache.put(sealed.digest, sealed.payload)
            if sealed.digest == needed:
                found = data
    if needed is not None and needed in damaged:
        raise damaged[needed]
    return found


def install_fetcher(store: Store) -> None:
    """Let this (blocking) process read chunks of lazily pulled snapshots on demand."""
    buckets = Buckets(store)

    def fetch(wanted: list[tuple[bytes, RemoteChunk]]) -> None:
        data = download(store, buckets, wanted, wanted[0][0])
        if data is not None:
            store.chunk_cache.put(wanted[0][0], data)

    store.fetch_remote = fetch
