"""What the daemon does with the memory of flushed data: keep it while writes go on, give it
back once the daemon falls idle.

A burst of writes fills up to ~512 MiB of block buffers (256 MiB dirty, 256 MiB in flight);
each 1 MiB write request arrives in fresh memory that pyfuse3 allocates, and is kept as it is
until its batch commits. Memory glibc takes fresh from the kernel is faulted in a page at a time
on the FUSE thread, which is the wall of a sequential write (docs/benchmarks.md, sessions 17-20).
By default glibc hands memory back by itself whenever the top of its heap is free: a 192 MiB
write 6 s after another faulted 20,750 pages in again (56,434 the first time), where it faults
~2,000 with glibc told to keep what is freed (``keep_freed_memory``). The daemon decides when
to give memory back instead: once no batch has committed for a while (``daemon/flusher.py``).
Then ``malloc_trim`` hands the free part back (after a 512 MiB write: 384 -> 123 MiB resident,
in 13-19 ms; session 9), so a daemon left idle after one large write does not keep memory a
notebook's kernel could use.
"""

from __future__ import annotations

import ctypes
from typing import Callable

# mallopt(3) parameters, from glibc's <malloc.h>
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
# Allocations below this come from the heap and are reused once freed, not mapped and unmapped
# each time (glibc's ceiling for the threshold on 64-bit systems).
HEAP_ALLOCATIONS_BELOW = 32 << 20
# glibc trims the top of its heap only when this much of it is free: in practice, never.
TRIM_ONLY_ABOVE = 1 << 30


def _libc_function(name: str) -> Callable[..., int] | None:
    try:
        return getattr(ctypes.CDLL(None), name)
    except AttributeError:  # a libc without it (musl): its own policy stands
        return None


_malloc_trim = _libc_function("malloc_trim")
_mallopt = _libc_function("mallopt")


def keep_freed_memory() -> bool:
    """Make glibc keep freed memory for reuse until ``return_freed_memory``; False where the
    libc cannot. Setting the thresholds also turns off glibc's own adjustment of them."""
    if _mallopt is None or _malloc_trim is None:
        return False
    done = _mallopt(M_MMAP_THRESHOLD, HEAP_ALLOCATIONS_BELOW)
    return bool(done and _mallopt(M_TRIM_THRESHOLD, TRIM_ONLY_ABOVE))


def return_freed_memory() -> bool:
    """Release the heap's free memory to the kernel; False where the libc cannot. It walks the
    heap for some milliseconds: call it in a worker thread (ctypes releases the GIL)."""
    if _malloc_trim is None:
        return False
    _malloc_trim(0)
    return True
