"""Reading and writing versioned records along a branch's ancestry.

A *view* is the chain ``((branch, epoch), (parent, fork_epoch), ...)`` from a branch to the
root of its history. The record a view sees for a name is the newest one at or below the
epoch of the first link that has any record for it; a tombstone there hides everything older.
This is what makes snapshots and branches O(1): nothing is copied, later writes simply add
newer versions.
"""

from __future__ import annotations

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


def scan(txn: lmdb.Transaction, db, view: View, owner: int, start: bytes = b"") -> dict[bytes, bytes]:
    """Every live name the view sees under ``owner`` (from ``start`` on), with its value."""
    seen: dict[bytes, bytes | None] = {}
    for branch, epoch in view:
        for name, record_epoch, value in _records(txn, db, owner_prefix(branch, owner), start):
            # Versions of a name come newest first: the first one at or below the epoch wins,
            # and a name a descendant branch already decided is hidden from its ancestors.
            if record_epoch > epoch or name in seen:
                continue
            seen[name] = value[1:] if value else None
    return {name: value for name, value in seen.items() if value is not None}


def _records(txn: lmdb.Transaction, db, prefix: bytes, start: bytes) -> Iterator[tuple[bytes, int, bytes]]:
    cursor = txn.cursor(db)
    if not cursor.set_range(prefix + start):
        return
    for key, value in cursor:
        if not key.startswith(prefix):
            return
        yield key[len(prefix):-EPOCH_BYTES], epoch_of(key), value


def has_any(txn: lmdb.Transaction, db, view: View, owner: int) -> bool:
    """Whether the view sees at least one live name under ``owner`` (an emptiness test).

    Stops at the first live name instead of listing the whole directory like ``scan``."""
    decided: set[bytes] = set()
    for branch, epoch in view:
        for name, record_epoch, value in _records(txn, db, owner_prefix(branch, owner), b""):
            if record_epoch > epoch or name in decided:
                continue
            if value:
                return True
            decided.add(name)
    return False
