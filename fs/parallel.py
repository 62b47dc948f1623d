"""Sharing one caller's batch of GIL-free work (zstd, blake3) with the machine's other cores.

A cold sequential read is one request after another, each for 1 MiB: eight 128 KiB chunks to
decompress and verify, ~1 ms of one core while the others idle. Handing the whole request to a
thread does not help (the next request waits for this one; measured, docs/benchmarks.md,
session 14); splitting the request's chunks between the caller and helper threads does. The
caller works too, and takes the next unclaimed item itself rather than waiting for a helper the
scheduler has not run yet, so a busy machine costs a wake-up, not a stall."""

from __future__ import annotations

import itertools
import os
import threading
from concurrent.futures import ThreadPoolExecutor, wait
from typing import Callable, Sequence, TypeVar

T = TypeVar("T")
R = TypeVar("R")

HELPERS = max(0, min(len(os.sched_getaffinity(0)) - 1, 3))  # the cores we may run on, not the machine's

_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def _helpers() -> ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(HELPERS, thread_name_prefix="cowfs-shared-work")
        return _pool


def map_shared(work: Callable[[T], R], items: Sequence[T]) -> list[R]:
    """``[work(item) for item in items]``, spread over the caller and up to ``HELPERS`` threads.

    ``work`` must release the GIL for most of its time (else this only adds hand-offs) and be
    safe in any thread. The first exception any item raised is raised here, after every claimed
    item has finished, so no helper is still touching the caller's data when it returns."""
    if HELPERS == 0 or len(items) < 2:
        return [work(item) for item in items]
    results: list[tuple[bool, object] | None] = [None] * len(items)
    claims = itertools.count()  # next() on it is atomic under the GIL: each item claimed once

    def take_turns() -> None:
        for i in claims:
            if i >= len(items):
                return
            try:
                results[i] = (True, work(items[i]))
            except BaseException as exc:  # noqa: B036 - handed to the caller, raised there
                results[i] = (False, exc)

    helpers = [_helpers().submit(take_turns) for _ in range(min(HELPERS, len(items) - 1))]
    take_turns()
    if any(result is None for result in results):  # items a helper claimed are still running
        wait([helper for helper in helpers if not helper.cancel()])
    values = []
    for ok, value in results:  # type: ignore[misc]
        if not ok:
            raise value  # type: ignore[misc]
        values.append(value)
    return values  # type: ignore[return-value]
