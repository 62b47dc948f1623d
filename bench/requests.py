"""Which FUSE requests a workload makes, as the kernel counts them, and what each may cost for
cowfs to stay within 1.2x native.

    python bench/requests.py [--reps 3] [--repo-files 2000] [--only git,python]

Each workload runs --reps times in a native directory and on a cowfs mount (medians), then once
more on cowfs with the kernel's ``fuse:fuse_request_send`` and ``fuse:fuse_request_end``
tracepoints on. Its requests are counted by opcode and split in two:
- those the caller waits for;
- those it does not (RELEASE, RELEASEDIR, FORGET, BATCH_FORGET, INTERRUPT, and WRITEs sent by
  the kernel's writeback workers).

A request the caller waits for is at least two processes waking each other. The table sets
what cowfs adds per waited-for request beside the budget a goal leaves (for cowfs within 1.2x
native: 0.2 x native / requests) and beside the floor: the median round trip of two processes
ping-ponging a byte over pipes, back to back, both on one CPU so that no idle CPU has to wake
(``round_trip.PipeFloor``). A budget under the floor is a goal that no FUSE daemon, however
fast, can meet on this kernel. Needs root, /dev/fuse and tracefs; the python workloads need PyPI
for the wheels, like bench/workloads.py.
"""

from __future__ import annotations

import argparse
import functools
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

sys.path.insert(0, str(Path(__file__).resolve().parent))

from round_trip import PipeFloor, after_gaps  # noqa: E402
from run import in_turn, machine, target, timed, until_compressed  # noqa: E402
from workloads import GIT, IMPORTS, prepare_repository, prepare_wheels, run  # noqa: E402

GOAL = 1.2  # issue 10: imports, clone and checkout within 1.2x native
TRACING = Path("/sys/kernel/tracing")
EVENTS = ("fuse_request_send", "fuse_request_end")
NOT_WAITED_FOR = {"FUSE_RELEASE", "FUSE_RELEASEDIR", "FUSE_FORGET", "FUSE_BATCH_FORGET", "FUSE_INTERRUPT"}
EVENT = re.compile(r"^\s*(?P<comm>.+?)-\d+\s+\[\d+\]\s+\S+\s+[\d.]+: fuse_request_(?P<kind>send|end): "
                   r"connection (?P<connection>\d+) req (?P<req>\d+)(?: opcode \d+ \((?P<opcode>\w+)\))?")


@dataclass(frozen=True)
class Requests:
    waited: Counter[str]
    not_waited: Counter[str]


def count_requests(lines: Iterable[str], connection: int) -> Requests:
    """Answered requests of one connection by opcode; those still in flight when tracing
    stopped are left out."""
    sent: dict[str, tuple[str, str]] = {}
    waited: Counter[str] = Counter()
    not_waited: Counter[str] = Counter()
    for line in lines:
        event = EVENT.match(line)
        if event is None or int(event["connection"]) != connection:
            continue
        if event["kind"] == "send":
            sent[event["req"]] = (event["opcode"], event["comm"])
        elif event["req"] in sent:
            opcode, sender = sent.pop(event["req"])
            background = opcode in NOT_WAITED_FOR or (opcode == "FUSE_WRITE" and sender.startswith("kworker"))
            (not_waited if background else waited)[opcode.removeprefix("FUSE_")] += 1
    return Requests(waited, not_waited)


class FuseTrace:
    """The kernel's FUSE request events of one connection while the context is open, counted
    into ``requests`` when it closes; the trace buffer is then emptied and given its size back,
    whatever happened inside."""

    def __init__(self, mountpoint: Path) -> None:
        self.connection = os.minor(os.stat(mountpoint).st_dev)  # the fusectl connection id
        self.requests = Requests(Counter(), Counter())

    def __enter__(self) -> FuseTrace:
        if not (TRACING / "events").is_dir():
            subprocess.run(["mount", "-t", "tracefs", "nodev", str(TRACING)], check=True)
        (TRACING / "tracing_on").write_text("0")
        self.buffer_kb = (TRACING / "buffer_size_kb").read_text().split()[0]
        (TRACING / "buffer_size_kb").write_text("131072")  # a pip install is ~250,000 events
        (TRACING / "trace").write_text("")
        for event in EVENTS:
            (TRACING / "events" / "fuse" / event / "enable").write_text("1")
        (TRACING / "tracing_on").write_text("1")
        return self

    def __exit__(self, *exc: object) -> None:
        (TRACING / "tracing_on").write_text("0")
        try:
            for event in EVENTS:
                (TRACING / "events" / "fuse" / event / "enable").write_text("0")
            with open(TRACING / "trace") as lines:
                self.requests = count_requests(lines, self.connection)
        finally:
            (TRACING / "trace").write_text("")
            (TRACING / "buffer_size_kb").write_text(self.buffer_kb)


@dataclass(frozen=True)
class Workload:
    name: str
    prepare: Callable[[Path], object]  # once per directory, not timed
    action: Callable[[Path], object]  # timed; must be repeatable
    tidy: Callable[[Path], object] = lambda _: None  # after each action, not timed


def workloads(scratch: Path, only: set[str], repo_files: int, packages: list[str]) -> list[Workload]:
    chosen = []
    if "git" in only:
        repo = prepare_repository(scratch, repo_files)
        chosen += [
            Workload("git clone --no-local", prepare=lambda mnt: None,
                     action=lambda mnt: run(*GIT, "clone", "-q", "--no-local", str(repo), str(mnt / "c")),
                     tidy=lambda mnt: shutil.rmtree(mnt / "c")),
            Workload("git checkout and back",  # after `git status`, as in bench/workloads.py
                     prepare=lambda mnt: (run(*GIT, "clone", "-q", "--no-local", str(repo), str(mnt / "checkout")),
                                          run(*GIT, "status", "--porcelain", cwd=mnt / "checkout")),
                     action=lambda mnt: (run(*GIT, "checkout", "-q", "first", cwd=mnt / "checkout"),
                                         run(*GIT, "checkout", "-q", "second", cwd=mnt / "checkout"))),
        ]
    if "python" in only:
        wheels = prepare_wheels(scratch, packages)

        def install(mnt: Path) -> None:
            run(sys.executable, "-m", "venv", str(mnt / "venv"))
            run(str(mnt / "venv" / "bin" / "python"), "-m", "pip", "install", "-q", "--no-index",
                "--find-links", str(wheels), *packages)
            run(str(mnt / "venv" / "bin" / "python"), "-c", IMPORTS)  # writes __pycache__

        chosen.append(Workload("import, warm", prepare=install,
                               action=lambda mnt: run(str(mnt / "venv" / "bin" / "python"), "-c", IMPORTS)))
    return chosen


def measure(workload: Workload, directories: dict[str, Path], reps: int,
            settle: Callable[[], object]) -> dict[str, float]:
    """Median seconds per directory, the directories taking turns (``in_turn``: first in one
    repetition, last in the next, since on this VM a run right after another is faster).
    ``settle`` runs before each: the daemon compresses what a run wrote once it is idle, which
    would otherwise be charged to whichever run comes next."""
    times: dict[str, list[float]] = {kind: [] for kind in directories}
    for rep in range(reps):
        for kind in in_turn(rep, list(directories)):
            settle()
            times[kind].append(timed(lambda: workload.action(directories[kind])))
            workload.tidy(directories[kind])
    return {kind: statistics.median(taken) for kind, taken in times.items()}


def traced(workload: Workload, mnt: Path) -> Requests:
    with FuseTrace(mnt) as trace:
        workload.action(mnt)
    workload.tidy(mnt)
    return trace.requests


def same_cpu_floor() -> float:
    """µs for two processes pinned to one CPU to wake each other and back (median)."""
    allowed = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(allowed)})  # the child PipeFloor forks inherits it
    try:
        pipe = PipeFloor()
        try:
            return after_gaps(pipe.ping, 2000, 0)[0]
        finally:
            pipe.close()
    finally:
        os.sched_setaffinity(0, allowed)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--repo-files", type=int, default=2000)
    parser.add_argument("--only", default="git,python", help="comma-separated subset of git,python")
    parser.add_argument("--packages", default="numpy pandas scikit-learn scipy")
    parser.add_argument("--scratch", default="/var/tmp")
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="cowfs-requests-", dir=args.scratch))
    rows = []
    try:
        floor_us = same_cpu_floor()
        for workload in workloads(scratch, set(args.only.split(",")), args.repo_files, args.packages.split()):
            with target("native", scratch) as native_dir, target("cowfs", scratch) as mnt:
                directories = {"native": native_dir, "cowfs": mnt}
                for directory in directories.values():
                    workload.prepare(directory)
                settle = functools.partial(until_compressed, mnt.parent / "store")
                medians = measure(workload, directories, args.reps, settle)
                settle()
                requests = traced(workload, mnt)
            rows.append((workload.name, medians["native"], medians["cowfs"], requests))
            print(f"  {workload.name} done", file=sys.stderr)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print(f"{machine()} Floor: {floor_us:.1f} µs, the median round trip of two processes on one CPU over "
          f"pipes, back to back. Times are medians of {args.reps} runs, s; requests are one more run on "
          "cowfs, counted by the kernel's tracepoints; per-request figures in µs.\n")
    print(f"| workload | native | cowfs | cowfs/native | requests waited for | not waited for "
          f"| cowfs adds per request | budget for {GOAL}x native | budget/floor |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, native, on_cowfs, requests in rows:
        waited = sum(requests.waited.values())
        budget = (GOAL - 1) * native / waited * 1e6
        print(f"| {name} | {native:.2f} | {on_cowfs:.2f} | {on_cowfs / native:.2f} | {waited:,} "
              f"| {sum(requests.not_waited.values()):,} | {(on_cowfs - native) / waited * 1e6:.1f} "
              f"| {budget:.1f} | {budget / floor_us:.2f} |")
    print("\n| workload | requests waited for, by opcode | not waited for |")
    print("|---|---|---|")
    for name, _, _, requests in rows:
        print(f"| {name} | {', '.join(f'{op} {n:,}' for op, n in requests.waited.most_common())} "
              f"| {', '.join(f'{op} {n:,}' for op, n in requests.not_waited.most_common())} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
