"""Waiting for the next FUSE request without putting the CPU to sleep in between.

A FUSE round trip is two wake-ups: the kernel wakes the daemon with a request, the daemon's
reply wakes the caller. When the daemon's CPU has gone idle in between, each wake-up costs an
inter-processor interrupt and, on a virtual machine, an exit to the hypervisor: on the
project's 2-core VM a request answered in C (``isatty``'s ioctl) took 50-70 µs, of which
trio and pyfuse3 were ~20 µs. Callers ask in bursts (an ``open`` is followed by ``fstat``,
``ioctl``, ``read``, ``close``; ``tar`` and ``git`` create file after file), so after each
reply this reader watches ``/dev/fuse`` for a few tens of microseconds before it parks in
trio: the next request of the burst is found with the CPU still awake, and served without a
pass through trio's scheduler. Measured in A/Bs (docs/benchmarks.md, session 8): ``isatty``
58-69 → 18-21 µs, open+close 97-139 → 46-53 µs, 5,000 file creates 2.3-3.9 → 1.2-1.6 s, a
venv + pip install of the scientific stack 36-40 → 28-31 s with 15% less daemon CPU.

What it costs: at most ``SPIN_NS`` of one core after a request that no other follows, and
nothing while idle. Trio still runs every ``TURN_NS``, so the flusher, the control socket
and thread completions are not held up by a long burst.

pyfuse3 has no hook for this; its worker tasks call the module-level ``_wait_fuse_readable``
by name before each request, which ``install`` replaces. The contract kept: one task at a time
waits on the descriptor; a task told ``True`` reads exactly one request before it yields;
``False`` once the session is closing. Spare workers park here and one is woken whenever the
reader goes on to serve, so a handler that blocks (``fsync`` waiting for a flush, a read
waiting for a remote) never stops the others from being served. (pyfuse3 counts waiting
workers in a field Python cannot reach, so it sees none and grows to its 99 workers, which
park here: a few KiB each.)
"""

from __future__ import annotations

import os
import select
import time

import pyfuse3
import trio

SPIN_NS = 50_000  # how long to watch for the next request of a burst (~one round trip)
TURN_NS = 1_000_000  # the longest trio's other tasks wait while a burst is served
BURST_GAP_NS = 2 * SPIN_NS  # a wait in trio this short says the caller's next request was near


class FuseReader:
    """Replaces ``pyfuse3._wait_fuse_readable`` for the life of one FUSE session."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.waiting = False  # a task is parked in trio on the descriptor
        self.closed = False
        self.spares = trio.lowlevel.ParkingLot()
        self.spare_called = False  # a spare was woken and has not run yet
        self.turn_started = time.perf_counter_ns()
        # Spin only while requests come close together: a caller that computes between its
        # requests (pip unpacking a wheel) would make every spin a loss on a busy machine.
        self.bursting = True
        self.poller = select.poll()
        self.poller.register(fd, select.POLLIN)
        self.requests = 0  # handed to pyfuse3 so far: the recompressor waits for them to stop

    async def wait_readable(self) -> bool:
        if self.closed:
            return False
        if not self.waiting and self.bursting and self._request_arrives_soon():
            if not self.spare_called:  # someone to take over if this request's handler blocks
                self.spare_called = bool(self.spares.unpark(count=1))
            self.requests += 1
            return True
        while self.waiting and not self.closed:
            await self.spares.park()
            self.spare_called = False
        if self.closed:
            return False
        self.waiting = True
        parked = time.perf_counter_ns()
        try:
            await trio.lowlevel.wait_readable(self.fd)
        except trio.ClosedResourceError:  # pyfuse3.terminate() closes the descriptor for us
            self.closed = True
            return False
        finally:
            self.waiting = False
            if self.closed:
                self.spares.unpark_all()
            elif not self.spare_called:
                self.spare_called = bool(self.spares.unpark(count=1))
            self.turn_started = time.perf_counter_ns()
            self.bursting = self.turn_started - parked <= BURST_GAP_NS
        self.requests += 1
        return True

    def close(self) -> None:
        """The session ends: every task waiting here is told so (pyfuse3's own waiting checked
        the session's exit flag, which Python cannot see)."""
        self.closed = True
        self.spares.unpark_all()

    def _request_arrives_soon(self) -> bool:
        """Whether a request is, or within ``SPIN_NS`` becomes, readable; never once trio has
        waited ``TURN_NS`` for its turn. ``poll(0)`` releases the GIL each time round."""
        now = time.perf_counter_ns()
        if now - self.turn_started > TURN_NS:
            return False
        deadline = now + SPIN_NS
        while not self.poller.poll(0):
            if time.perf_counter_ns() > deadline:
                self.bursting = False
                return False
        return True


_installed: FuseReader | None = None


def session_fd() -> int | None:
    """The descriptor pyfuse3.init opened (pyfuse3 does not export it): this process's only
    open ``/dev/fuse``, whether opened here (root) or passed by fusermount3."""
    found = []
    for name in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{name}") == "/dev/fuse":
                found.append(int(name))
        except OSError:
            continue  # the listing's own descriptor, closed by now
    return found[0] if len(found) == 1 else None


def requests_served() -> int:
    """FUSE requests this process has read so far (0 without a ``FuseReader``)."""
    return _installed.requests if _installed is not None else 0


def install() -> FuseReader | None:
    """Serve the session with a ``FuseReader`` from now on. Without a single ``/dev/fuse`` to
    be sure of, or on a pyfuse3 without the hook, pyfuse3's own waiting stays."""
    fd = session_fd()
    if fd is None or not hasattr(pyfuse3, "_wait_fuse_readable"):
        return None
    global _installed
    _installed = FuseReader(fd)
    pyfuse3._wait_fuse_readable = _installed.wait_readable
    return _installed


def terminate() -> None:
    """``pyfuse3.terminate``, which also releases the tasks parked here."""
    if _installed is not None:
        _installed.close()
    pyfuse3.terminate()
