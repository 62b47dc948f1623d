"""Giving the memory of flushed data back to the system once the daemon falls idle.

A burst of writes fills up to ~320 MiB of block buffers (64 MiB dirty, 256 MiB in flight).
Once their batches commit the buffers are freed, but glibc keeps most of that memory in its
heap, so a daemon left idle after one large write stayed at 300+ MiB resident for good: memory
a notebook's kernel could use. ``malloc_trim`` hands the free part back to the kernel (after a
512 MiB write: 384 -> 123 MiB resident, in 13-19 ms; docs/benchmarks.md, session 9).
"""

from __future__ import annotations

import ctypes
from typing import Callable


def _find_malloc_trim() -> Callable[[int], int] | None:
    try:
        return ctypes.CDLL(None).malloc_trim
    except AttributeError:  # a libc without it (musl): its own policy stands
        return None


_malloc_trim = _find_malloc_trim()


def return_freed_memory() -> bool:
    """Release the heap's free memory to the kernel; False where the libc cannot. It walks the
    heap for some milliseconds: call it in a worker thread (ctypes releases the GIL)."""
    if _malloc_trim is None:
        return False
    _malloc_trim(0)
    return True
