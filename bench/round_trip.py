"""What one request to the daemon costs a caller, and how much of that no daemon can save.

    python bench/round_trip.py [--calls 2000] [--gaps 0,100,1000]

A FUSE request is two wake-ups: the kernel wakes the daemon, the daemon's reply wakes the
caller. Where a CPU has gone idle in between, each wake-up is an interrupt to another CPU (on a
virtual machine, an exit to the hypervisor), whatever language the daemon is written in. So
next to native, the pyfuse3 passthrough and cowfs, this bench measures the floor: two processes
waking each other over a pipe, with the same gaps. Each call follows a busy gap of G µs in the
caller: 0 is a caller that asks back to back (tar, git checkout), 100-1000 µs one that computes
between requests (import, pip). Rows:

- ``isatty`` on an open file: an IOCTL that libfuse answers in C (no Python handler runs), so
  it is the round trip itself. Python's ``open()`` asks it of every file it opens.
- ``stat`` of a file just closed: a GETATTR (with the writeback cache the kernel forgets a
  file's block count at every close), answered by the daemon's Python handler.

Times are medians of --calls calls in µs (p90 in brackets); ratios are time over time (lower
is faster). Prints a markdown table. Needs root and /dev/fuse.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))

from run import BASE_TARGETS, target  # noqa: E402

clock = time.perf_counter_ns


def after_gaps(call: Callable[[], object], calls: int, gap_us: int,
               before: Callable[[], object] | None = None) -> tuple[float, float]:
    """Median and p90 of ``call`` in µs, each call after ``before`` (not timed) and ``gap_us``
    of busy work (not a sleep: a sleeping caller's CPU would go idle too, and its wake-up be
    counted)."""
    taken = []
    for _ in range(calls):
        if before is not None:
            before()
        until = clock() + gap_us * 1000
        while clock() < until:
            pass
        started = clock()
        call()
        taken.append(clock() - started)
    taken.sort()
    return taken[len(taken) // 2] / 1000, taken[int(len(taken) * 0.9)] / 1000


def isatty_probe(directory: Path, calls: int, gap: int) -> tuple[float, float]:
    path = directory / "probe"
    path.write_bytes(b"x")
    fd = os.open(path, os.O_RDONLY)
    try:
        return after_gaps(lambda: os.isatty(fd), calls, gap)
    finally:
        os.close(fd)


def stat_after_close_probe(directory: Path, calls: int, gap: int) -> tuple[float, float]:
    path = directory / "probe"
    path.write_bytes(b"x")
    return after_gaps(lambda: os.stat(path), calls, gap, before=lambda: os.close(os.open(path, os.O_RDONLY)))


PROBES = {"isatty": isatty_probe, "stat after close": stat_after_close_probe}


class PipeFloor:
    """Two processes waking each other: a child blocked in read() on one pipe answers on
    another; the parent times write-then-read."""

    def __init__(self) -> None:
        requests, self.to_child = os.pipe()
        self.from_child, replies = os.pipe()
        self.child = os.fork()
        if self.child == 0:
            try:
                while (byte := os.read(requests, 1)) != b"q":
                    os.write(replies, byte)
            finally:
                os._exit(0)
        os.close(requests)
        os.close(replies)

    def ping(self) -> None:
        os.write(self.to_child, b"x")
        os.read(self.from_child, 1)

    def close(self) -> None:
        os.write(self.to_child, b"q")
        os.waitpid(self.child, 0)
        os.close(self.to_child)
        os.close(self.from_child)


def fmt(figure: tuple[float, float]) -> str:
    return f"{figure[0]:,.1f} [{figure[1]:,.1f}]"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--gaps", default="0,100,1000", help="busy µs before each call, comma-separated")
    args = parser.parse_args()
    gaps = [int(g) for g in args.gaps.split(",")]
    calls = {"isatty": args.calls, "stat after close": args.calls // 4}  # each stat also opens and closes
    results: dict[tuple[str, int, str], tuple[float, float]] = {}  # (probe, gap, target): median, p90
    floor: dict[int, tuple[float, float]] = {}
    # All three mounted at once and measured gap by gap, the floor in between: the machine's
    # wake-up cost drifts over minutes, and a row should compare one moment.
    with tempfile.TemporaryDirectory(prefix="cowfs-rtt-", dir="/var/tmp") as scratch, \
            contextlib.ExitStack() as mounted:
        mounts = {kind: mounted.enter_context(target(kind, Path(scratch))) for kind in BASE_TARGETS}
        pipe = PipeFloor()
        mounted.callback(pipe.close)
        for gap in gaps:
            for kind, mnt in mounts.items():
                for probe, measure in PROBES.items():
                    results[probe, gap, kind] = measure(mnt, calls[probe], gap)
            floor[gap] = after_gaps(pipe.ping, args.calls, gap)
    print(f"Round trips: {calls['isatty']} isatty calls and {calls['stat after close']} stat-after-close calls "
          f"per row, each after a busy gap in the caller; µs, median [p90]. The floor: two processes "
          f"waking each other over a pipe after the same gap, measured between the others.\n")
    print("| call | native | passthrough | cowfs | pipe floor | cowfs/passthrough | cowfs/floor |")
    print("|---|---|---|---|---|---|---|")
    for probe in PROBES:
        for gap in gaps:
            native, passthrough, cowfs = (results[probe, gap, kind] for kind in BASE_TARGETS)
            print(f"| {probe}, {gap} µs gap | {fmt(native)} | {fmt(passthrough)} | {fmt(cowfs)} | {fmt(floor[gap])} "
                  f"| {cowfs[0] / passthrough[0]:.2f} | {cowfs[0] / floor[gap][0]:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
