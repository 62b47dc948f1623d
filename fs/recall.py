"""Records a tree read from its index lately, kept so that the next read of them needs no
read transaction.

Why: an index read costs ~10 µs of the daemon's single FUSE thread (a transaction, a cursor
seek per link of the view, a decode), and a workspace asks for the same few records over and
over: a venv + pip install makes ~60,000 lookups and stats, a warm ``import`` of the
scientific stack ~2,600. Answered from memory, each costs well under a microsecond.

Why it stays right: a tree's committed records change only when one of its own batches
commits. Until then the batch's in-memory layer answers for every record it holds, before this
cache is asked; when it has committed, the tree forgets what the batch held before any reader
can look past the layer (``Tree.batch_committed``). So a remembered record is never older than
the index, and the cache needs no other invalidation.
"""

from __future__ import annotations

from typing import Generic, Hashable, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

RECALL_LIMIT = 1 << 16  # records per table: at most ~24 MiB of attributes and ~13 MiB of entries


class Recall(Generic[K, V]):
    """A bounded map that forgets everything at once when full: a scan through a million files
    costs one clear per ``limit`` reads, where keeping recency would cost on every hit."""

    __slots__ = ("_records", "limit")

    def __init__(self, limit: int = RECALL_LIMIT) -> None:
        self._records: dict[K, V] = {}
        self.limit = limit

    def get(self, key: K, default: object) -> V | object:
        return self._records.get(key, default)

    def remember(self, key: K, value: V) -> V:
        if len(self._records) >= self.limit:
            self._records.clear()
        self._records[key] = value
        return value

    def forget(self, key: K) -> None:
        self._records.pop(key, None)

    def items(self) -> list[tuple[K, V]]:
        return list(self._records.items())
