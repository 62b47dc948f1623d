"""Which snapshots to keep: pins, branch origins, and a prune policy in the manner of restic
and borg. Planning is a pure function; removing is one transaction per call."""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

import lmdb

from cowfs.fs.errors import StoreError
from cowfs.fs.keys import DB_SNAPSHOTS
from cowfs.fs.records import SnapshotRecord
from cowfs.fs.store import Store


@dataclass(frozen=True)
class Policy:
    keep_last: int = 0
    keep_within: float = 0.0  # seconds
    keep_hourly: int = 0
    keep_daily: int = 0

    @property
    def empty(self) -> bool:
        return not (self.keep_last or self.keep_within or self.keep_hourly or self.keep_daily)


def parse_duration(text: str) -> float:
    """``90s``, ``30m``, ``12h``, ``1d``, ``2w`` -> seconds."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
    text = text.strip().lower()
    if not text or text[-1] not in units or not text[:-1].replace(".", "", 1).isdigit():
        raise StoreError(f"cannot read the duration {text!r}; write it like 90s, 30m, 12h, 1d or 2w")
    return float(text[:-1]) * units[text[-1]]


def protected(store: Store, snapshots: list[SnapshotRecord]) -> dict[int, str]:
    """Snapshots that must not go, with why: pinned, or the origin of a branch."""
    reasons = {r.id: "pinned" for r in snapshots if r.pinned}
    origins = {(b.parent, b.name) for b in store.branches() if b.parent is not None}
    for record in snapshots:
        for parent, name in origins:
            if parent == (record.branch, record.epoch) and record.id not in reasons:
                # Several snapshots may share the origin's epoch; keep one of them for the log.
                reasons[record.id] = f"branch {name} was made from it"
                break
    return reasons


def plan_prune(snapshots: list[SnapshotRecord], policy: Policy, now: float,
               keep_ids: set[int]) -> tuple[list[SnapshotRecord], list[SnapshotRecord]]:
    """(keep, remove) per the policy, applied to each branch's snapshots separately.

    Companion snapshots (``kind: vars``, the variables a kernel wrote in the background for
    a cell) do not count towards the policy: each stays exactly while a kept snapshot reads
    its variables from it (its cell's after-snapshot, or the before-snapshot of the next)."""
    keep: set[int] = set(keep_ids)
    companions = [r for r in snapshots if r.meta.get("kind") == "vars"]
    by_branch: dict[int, list[SnapshotRecord]] = {}
    for record in snapshots:
        if record.meta.get("kind") != "vars":
            by_branch.setdefault(record.branch, []).append(record)
    for records in by_branch.values():
        newest_first = sorted(records, key=lambda r: r.created, reverse=True)
        keep.update(r.id for r in newest_first[:policy.keep_last])
        keep.update(r.id for r in newest_first if policy.keep_within and now - r.created <= policy.keep_within)
        for count, bucket_format in ((policy.keep_hourly, "%Y-%m-%d %H"), (policy.keep_daily, "%Y-%m-%d")):
            buckets: list[str] = []
            for record in newest_first:  # the newest snapshot of each hour/day
                bucket = time.strftime(bucket_format, time.localtime(record.created))
                if len(buckets) >= count:
                    break
                if bucket not in buckets:
                    buckets.append(bucket)
                    keep.add(record.id)
    kept = [r for r in snapshots if r.id in keep]
    needed = {r.name for r in kept} | {r.meta["vars_from"] for r in kept if r.meta.get("vars_from")}
    keep.update(c.id for c in companions if c.meta.get("for") in needed)
    ordered = sorted(snapshots, key=lambda r: r.id)
    return [r for r in ordered if r.id in keep], [r for r in ordered if r.id not in keep]


def remove_snapshots(store: Store, records: list[SnapshotRecord], force_pinned: bool = False) -> None:
    """Delete snapshot records (their data goes at the next gc). Refuses protected ones."""
    reasons = protected(store, store.snapshots())
    for record in records:
        reason = reasons.get(record.id)
        if reason == "pinned" and force_pinned:
            continue
        if reason:
            raise StoreError(f"snapshot {record.name} is kept: {reason}"
                             + ("; `cowfs unpin` it first" if reason == "pinned" else ""))
    db = store.index.db(DB_SNAPSHOTS)

    def change(txn: lmdb.Transaction) -> None:
        for record in records:
            txn.delete(str(record.id).encode(), db=db)

    store.index.write(change)


def set_pinned(store: Store, record: SnapshotRecord, pinned: bool) -> SnapshotRecord:
    return _rewrite(store, replace(record, pinned=pinned))


def set_label(store: Store, record: SnapshotRecord, label: str) -> SnapshotRecord:
    """A label is how a person finds a snapshot again (`cowfs mount before-svm ...`)."""
    return _rewrite(store, replace(record, label=label.strip()))


def _rewrite(store: Store, updated: SnapshotRecord) -> SnapshotRecord:
    store.index.write(lambda txn: store.put_snapshot(txn, updated))
    return updated
