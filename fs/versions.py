"""Reading and writing versioned records along a branch's ancestry.

A *view* is the chain ``((branch, epoch), (parent, fork_epoch), ...)`` from a branch to the
root of its history. The record a view sees for a name is the newest one at or below the
epoch of the first link that has any record for it; a tombstone there hides everything older.
This is what makes snapshots and branches O(1): nothing is copied, later writes simply add
newer versions.
"""

from __future__ import annotations

import heapq
from typing import Iterator

import lmdb

from cowfs.fs.keys import EPOCH_BYTES, LIVE, TOMBSTONE, epoch_of, inverted, owner_prefix, versioned_key

View = tuple[tuple[int, int], ...]


def get(txn: lmdb.Transaction, db, view: View, owner: int, name: bytes) -> bytes | None:
    """The value the view sees, or None when absent or deleted."""
    cursor = txn.cursor(db)
    for branch, epoch in view:
        wanted = owner_prefix(branch, owner) + name
        if cursor.set_range(wanted + inverted(epoch)):
            key = cursor.key()
            if key[:-EPOCH_BYTES] == wanted:
                value = cursor.value()
                return value[1:] if value else None
    return None


def put(txn: lmdb.Transaction, db, branch: int, epoch: int, owner: int, name: bytes,
        value: bytes | None) -> None:
    """Write (or with None, delete) a name at ``epoch``; same-epoch writes replace in place."""
    txn.put(versioned_key(branch, owner, name, epoch), TOMBSTONE if value is None else LIVE + value,
            db=db)


def iter_scan(txn: lmdb.Transaction, db, view: View, owner: int, start: bytes = b"") -> Iterator[tuple[bytes, bytes]]:
    """Every live name the view sees under ``owner`` (from ``start`` on), in name order, with its
    value; streamed, so a directory of a million entries is never held in memory at once.

    Each link of the view yields, per name, its newest record at or below the link's epoch; the
    links are merged by (name, link), so for each name the first record decides: a descendant
    link comes before its ancestors."""
    def link_records(position: int, branch: int, epoch: int) -> Iterator[tuple[bytes, int, bytes]]:
        for name, value in _deciding_records(txn, db, owner_prefix(branch, owner), start, epoch):
            yield name, position, value

    decided = None
    for name, _, value in heapq.merge(*(link_records(i, b, e) for i, (b, e) in enumerate(view))):
        if name == decided:
            continue
        decided = name
        if value:
            yield name, value[1:]


def scan(txn: lmdb.Transaction, db, view: View, owner: int, start: bytes = b"") -> dict[bytes, bytes]:
    """``iter_scan`` gathered in a dict."""
    return dict(iter_scan(txn, db, view, owner, start))


def _deciding_records(txn: lmdb.Transaction, db, prefix: bytes, start: bytes,
                      epoch: int) -> Iterator[tuple[bytes, bytes]]:
    """Per name under ``prefix``, its newest record at or below ``epoch`` (tombstones included).

    Two seeks a name, whatever its history: a file rewritten by every notebook cell has as many
    versions as there were cells, and a listing must not step through them."""
    cursor = txn.cursor(db)
    found = cursor.set_range(prefix + start)
    while found:
        key = cursor.key()
        if not key.startswith(prefix):
            return
        name = key[len(prefix):-EPOCH_BYTES]
        if epoch_of(key) > epoch:  # versions newer than the view: jump to the first one it sees
            if not cursor.set_range(prefix + name + inverted(epoch)):
                return
            if cursor.key()[:-EPOCH_BYTES] != prefix + name:
                continue  # none at or below the epoch; the cursor is past this name already
        yield name, cursor.value()
        # Names are prefix-free, so every key of a later name sorts after this one's keys.
        found = cursor.set_range(prefix + name + b"\xff" * (EPOCH_BYTES + 1))

