"""cowfs benchmarks: each workload on a native directory, a minimal pyfuse3 passthrough and
cowfs, interleaved in one run, reported as median [min-max] and as ratios.

    python bench/run.py [--size-mb 1024] [--files 20000] [--reps 3] [--snapshot-files 1000,10000,100000] [--settle 0]

Prints a markdown table and writes bench/results/latest.json. Needs root and /dev/fuse.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterator, Sequence

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from cowfs.cli.client import snapshot  # noqa: E402
from cowfs.cli.idle_cpus import read_idle_policy  # noqa: E402
from cowfs.fs.store import Store  # noqa: E402

BASE_TARGETS = ("native", "passthrough", "cowfs")
# libfuse's minimal passthrough in C (bench/c_passthrough.sh builds it): what a FUSE filesystem
# gets on this machine when its daemon's language costs nothing. An optional fourth column.
C_PASSTHROUGH = os.environ.get("COWFS_BENCH_C_PASSTHROUGH")
TARGETS = BASE_TARGETS + (("C passthrough",) if C_PASSTHROUGH else ())


def in_turn(rep: int, targets: Sequence[str] = TARGETS) -> tuple[str, ...]:
    """The targets in the order repetition ``rep`` runs them: forwards, then backwards. On the
    project's VM a run right after another ran faster than the same run first (session 13: the
    later of two pip installs won 9 pairs of 10, whichever daemon it was), so with two or more
    repetitions each target goes first as often as last."""
    return tuple(targets) if rep % 2 == 0 else tuple(targets)[::-1]


def drop_caches() -> None:
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3")


def cowfs(*args: str, store: Path) -> str:
    env = {**os.environ, "COWFS_STORE": str(store)}
    result = subprocess.run([sys.executable, "-m", "cowfs.cli.main", *args], env=env, capture_output=True, text=True)
    if result.returncode:
        raise RuntimeError(f"cowfs {' '.join(args)} failed: {result.stderr.strip()}")
    return result.stdout


def wait_mounted(path: Path, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not os.path.ismount(path):
        if time.monotonic() > deadline:
            raise RuntimeError(f"{path} did not mount")
        time.sleep(0.02)


@contextlib.contextmanager
def target(kind: str, scratch: Path) -> Iterator[Path]:
    """A fresh, empty directory of the given kind; torn down afterwards whatever happens."""
    base = Path(tempfile.mkdtemp(prefix=f"{kind.replace(' ', '-')}-", dir=scratch))
    mnt = base / "mnt"
    mnt.mkdir()
    process = None
    try:
        if kind == "passthrough":
            (base / "backing").mkdir()
            process = subprocess.Popen([sys.executable, str(REPO / "bench" / "passthrough.py"),
                                        str(base / "backing"), str(mnt)])
            wait_mounted(mnt)
        elif kind == "C passthrough":  # its page cache, attribute and entry caching as cowfs asks
            (base / "backing").mkdir()
            process = subprocess.Popen([str(C_PASSTHROUGH), "-f", "-o",
                                        f"source={base / 'backing'},cache=always,writeback", str(mnt)])
            wait_mounted(mnt)
        elif kind == "cowfs":
            cowfs("init", store=base / "store")
            cowfs("mount", str(mnt), store=base / "store")
        yield mnt
    finally:
        if kind == "cowfs" and os.path.ismount(mnt):
            cowfs("umount", str(mnt), store=base / "store")
        if process is not None:
            subprocess.run(["fusermount3", "-u", str(mnt)], check=False)
            process.wait(timeout=30)
        shutil.rmtree(base, ignore_errors=True)


def timed(action: Callable[[], object]) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


# -- workloads: each returns {metric: value} for one repetition ---------------------------------------
def compressible(size: int) -> bytes:
    """CSV-like text (zstd -1 packs it ~3x): lines drawn at random from a pool of 200,000, so no
    two 128 KiB blocks are alike (nothing to deduplicate) and 1 GiB takes seconds to make."""
    rng = random.Random(1)
    pool = [f"{rng.randrange(10**6)},{rng.random():.6f},{rng.choice(['cat', 'dog', 'eel'])},"
            f"2026-11-{rng.randrange(1, 29):02d}\n".encode() for _ in range(200_000)]
    average = sum(map(len, pool)) / len(pool)
    return b"".join(rng.choices(pool, k=int(size / average) + 1000))[:size]


def until_compressed(store: Path, timeout: float = 300.0) -> float:
    """Seconds until the daemon has compressed what it stored raw to keep up (it waits for 2 s
    of quiet first): waited for so that this work is not charged to the next phase's figures,
    and reported beside them."""
    started = time.perf_counter()
    while time.perf_counter() - started < timeout:
        opened = Store.open(store, readonly=True)
        try:
            if not opened.uncompressed_packs():
                break
        finally:
            opened.close()
        time.sleep(0.05)
    return time.perf_counter() - started


def sequential(mnt: Path, payload: bytes, name: str, settle: Callable[[], float] | None = None) -> dict[str, float]:
    path = mnt / name
    mb = len(payload) / 2**20

    def write() -> None:
        with open(path, "wb") as handle:
            for offset in range(0, len(payload), 1 << 20):
                handle.write(payload[offset:offset + (1 << 20)])
            handle.flush()
            os.fsync(handle.fileno())

    def read() -> None:
        with open(path, "rb") as handle:
            while handle.read(1 << 20):
                pass

    result = {f"{name} write+fsync MB/s": mb / timed(write)}
    if settle is not None:
        result[f"{name}: compressed, s after fsync"] = settle()
    drop_caches()
    result[f"{name} cold read MB/s"] = mb / timed(read)
    result[f"{name} warm read MB/s"] = mb / timed(read)
    path.unlink()
    return result


def random_writes(mnt: Path, file_mb: int, count: int, settle: Callable[[], float] | None = None) -> dict[str, float]:
    path = mnt / "random.bin"
    with open(path, "wb") as handle:
        handle.truncate(file_mb << 20)
    rng = random.Random(2)
    block = os.urandom(4096)
    offsets = [rng.randrange(0, (file_mb << 20) // 4096) * 4096 for _ in range(count)]

    def run() -> None:
        fd = os.open(path, os.O_WRONLY)
        try:
            for offset in offsets:
                os.pwrite(fd, block, offset)
            os.fsync(fd)
        finally:
            os.close(fd)

    result = {"random 4 KiB writes+fsync /s": count / timed(run)}
    if settle is not None:
        result["random writes: compressed, s after fsync"] = settle()
    path.unlink()
    return result


def small_files(mnt: Path, count: int) -> dict[str, float]:
    root = mnt / "small"
    root.mkdir()
    names = [root / f"d{i % 50}" / f"f{i}.txt" for i in range(count)]
    for i in range(50):
        (root / f"d{i}").mkdir()
    create = timed(lambda: [p.write_bytes(b"x" * 100) for p in names])
    drop_caches()
    stat = timed(lambda: [p.stat() for p in names])
    listing = timed(lambda: [os.listdir(root / f"d{i}") for i in range(50)])
    delete = timed(lambda: [p.unlink() for p in names])
    shutil.rmtree(root)
    return {"create files/s": count / create, "stat files/s": count / stat,
            "list files/s": count / listing, "delete files/s": count / delete}


def source_tree(scratch: Path) -> tuple[Path, Path, int]:
    """A tarball and a git repository of a real tree: the Python standard library (~5k files)."""
    stdlib = Path(os.__file__).parent
    tarball = scratch / "stdlib.tar"
    subprocess.run(["tar", "cf", str(tarball), "--exclude=site-packages", "--exclude=__pycache__",
                    "-C", str(stdlib.parent), stdlib.name], check=True)
    count = int(subprocess.run(f"tar tf {tarball} | wc -l", shell=True, capture_output=True, text=True).stdout)
    repo = scratch / "repo"
    repo.mkdir()
    subprocess.run(["tar", "xf", str(tarball), "-C", str(repo)], check=True)
    git = ["git", "-C", str(repo), "-c", "user.email=b@e", "-c", "user.name=b"]
    subprocess.run(git + ["init", "-q"], check=True)
    subprocess.run(git + ["add", "-A"], check=True)
    subprocess.run(git + ["commit", "-qm", "stdlib"], check=True)
    return tarball, repo, count


def real_trees(mnt: Path, tarball: Path, repo: Path, count: int) -> dict[str, float]:
    (mnt / "untar").mkdir()
    untar = timed(lambda: subprocess.run(["tar", "xf", str(tarball), "-C", str(mnt / "untar")], check=True))
    clone = timed(lambda: subprocess.run(["git", "clone", "-q", str(repo), str(mnt / "clone")], check=True))
    return {f"tar x of {count} files, files/s": count / untar, f"git clone of {count} files, files/s": count / clone}


def run_comparisons(args: argparse.Namespace, scratch: Path) -> dict[str, dict[str, list[float]]]:
    results: dict[str, dict[str, list[float]]] = {kind: {} for kind in TARGETS}
    incompressible = os.urandom(args.size_mb << 20)
    text = compressible(args.size_mb << 20)
    tarball, repo, count = source_tree(scratch)
    for rep in range(args.reps):
        for kind in in_turn(rep):  # interleaved: drift in the machine hits every target alike
            with target(kind, scratch) as mnt:
                figures = {}
                settle = (lambda: until_compressed(mnt.parent / "store")) if kind == "cowfs" else None
                for name, payload in (("incompressible", incompressible), ("compressible", text)):
                    time.sleep(args.settle)
                    figures.update(sequential(mnt, payload, name, settle))
                time.sleep(args.settle)
                figures.update(random_writes(mnt, 256, args.random_writes, settle))
                figures.update(small_files(mnt, args.files))
                figures.update(real_trees(mnt, tarball, repo, count))
            for metric, value in figures.items():
                results[kind].setdefault(metric, []).append(value)
            print(f"  rep {rep + 1} {kind} done", file=sys.stderr)
    return results


# -- cowfs-only figures --------------------------------------------------------------------------------
def snapshot_latency(scratch: Path, file_counts: list[int], samples: int) -> dict[str, dict]:
    out: dict[str, dict] = {}
    with target("cowfs", scratch) as mnt:
        made = 0
        for count in file_counts:
            for i in range(made, count):
                directory = mnt / f"d{i // 1000}"
                if i % 1000 == 0:
                    directory.mkdir(exist_ok=True)
                (directory / f"f{i}").write_bytes(b"%d" % i)
            made = count
            for written_mb in (0, 1, 256):
                if written_mb and count != file_counts[0]:
                    continue
                # Alternated: a kernel's per-cell snapshot (lazy) and `cowfs snap` (listed at once).
                times: dict[str, list[float]] = {"per cell": [], "cowfs snap": []}
                for sample in range(2 * samples if written_mb < 256 else min(2 * samples, 20)):  # 256 MiB each
                    if written_mb:
                        (mnt / "changing.bin").write_bytes(os.urandom(written_mb << 20))
                    else:
                        (mnt / "tick").write_bytes(os.urandom(16))
                    kind = "per cell" if sample % 2 == 0 else "cowfs snap"
                    started = time.perf_counter()
                    snapshot(mnt, "bench", lazy=kind == "per cell")
                    times[kind].append((time.perf_counter() - started) * 1000)
                durable = time.perf_counter()
                snapshot(mnt, "bench-durable", wait=True)
                durable_ms = (time.perf_counter() - durable) * 1000
                for kind, taken in times.items():
                    taken.sort()
                    out[f"{count} files, {written_mb} MiB written, {kind}"] = {
                        "p50 ms": statistics.median(taken), "samples": len(taken),
                        "p99 ms": taken[min(len(taken) - 1, int(len(taken) * 0.99))], "durable ms": durable_ms}
        started = time.perf_counter()
        back = mnt.parent / "back"
        back.mkdir()
        store = mnt.parent / "store"
        cowfs("mount", "bench-durable", str(back), store=store)
        out["snapshot mount"] = {"ms": (time.perf_counter() - started) * 1000}
        cowfs("umount", str(back), store=store)
    return out


def space_after_change(scratch: Path, workspace_mb: int) -> dict[str, float]:
    with target("cowfs", scratch) as mnt:
        for i in range(workspace_mb // 64):
            (mnt / f"part{i}.bin").write_bytes(os.urandom(64 << 20))
        snapshot(mnt, "base", wait=True)
        with open(mnt / "part0.bin", "r+b") as handle:
            handle.seek(10 << 20)
            handle.write(os.urandom(1 << 20))
        record = snapshot(mnt, "after", wait=True)
        empty = snapshot(mnt, "empty", wait=True)
        store = Store.open(mnt.parent / "store", readonly=True)
        index_bytes = (mnt.parent / "store" / "index.lmdb" / "data.mdb").stat().st_size
        store.close()
    return {"workspace MiB": workspace_mb, "bytes added by 1 MiB change": record["bytes_added"],
            "bytes added by an unchanged snapshot": empty["bytes_added"], "index file bytes": index_bytes}


def figure_table(rows: dict[str, object]) -> str:
    """A two-column markdown table, as the single-target benchmarks print them."""
    return "\n".join(["| figure | value |", "|---|---|", *(f"| {name} | {value} |" for name, value in rows.items())])


def fmt(values: list[float]) -> str:
    def figure(value: float) -> str:  # three digits at least: a 0.05 s git status is not 0.0
        return f"{value:,.0f}" if value >= 1000 else f"{value:,.1f}" if value >= 10 else f"{value:.2f}"
    return f"{figure(statistics.median(values))} [{figure(min(values))}–{figure(max(values))}]"


def comparison_table(results: dict[str, dict[str, list[float]]], heading: str,
                     also: Sequence[tuple[str, str]] = ()) -> str:
    """Every target's median [min-max] per metric, then cowfs over each of the others, then the
    ``also`` ratios (numerator, denominator) between other targets."""
    ratios = [("cowfs", kind) for kind in TARGETS if kind != "cowfs"]
    ratios += [pair for pair in also if set(pair) <= set(TARGETS)]
    lines = [f"| {heading} | " + " | ".join(TARGETS) + " | " + " | ".join(f"{a}/{b}" for a, b in ratios) + " |",
             "|---" * (len(TARGETS) + len(ratios) + 1) + "|"]
    for metric in results["cowfs"]:
        if any(metric not in results[kind] for kind in TARGETS):  # cowfs's own (its deferred compression)
            lines.append(f"| {metric} | " + " | ".join(fmt(results[kind][metric]) if metric in results[kind] else "–"
                                                       for kind in TARGETS) + " |" + " – |" * len(ratios))
            continue
        med = {kind: statistics.median(results[kind][metric]) for kind in TARGETS}
        lines.append(f"| {metric} | " + " | ".join(fmt(results[kind][metric]) for kind in TARGETS) + " | "
                     + " | ".join(f"{med[a] / med[b]:.2f}" for a, b in ratios) + " |")
    return "\n".join(lines)


def machine() -> str:
    """What the figures depend on beyond the code (docs/benchmarks.md, session 21): on a VM whose
    idle CPUs halt at once, every FUSE round trip waits for two wake-ups (cowfs.cli.idle_cpus);
    where DAMON pages out what was not touched for a while, a "warm" read that comes later is
    partly cold, natively as on cowfs."""
    return f"Machine: {len(os.sched_getaffinity(0))} CPUs, {read_idle_policy().describe()}, {proactive_reclaim()}."


def proactive_reclaim(admin: Path = Path("/sys/kernel/mm/damon/admin/kdamonds")) -> str:
    """The shortest idle time after which a running DAMON pageout scheme reclaims memory."""
    ages = []
    for context in admin.glob("[0-9]*/contexts/[0-9]*"):  # beside them: nr_kdamonds, nr_contexts files
        try:
            if (context.parent.parent / "state").read_text().strip() != "on":
                continue
            aggregation_us = int((context / "monitoring_attrs" / "intervals" / "aggr_us").read_text())
            for scheme in context.glob("schemes/[0-9]*"):
                if (scheme / "action").read_text().strip() == "pageout":  # min age counts aggregations
                    ages.append(int((scheme / "access_pattern" / "age" / "min").read_text()) * aggregation_us / 1e6)
        except (OSError, ValueError):
            continue
    return f"DAMON pages out memory idle for {min(ages):g} s" if ages else "no DAMON pageout"


def report(results: dict, snapshots: dict, space: dict, args: argparse.Namespace) -> str:
    lines = [machine(),
             f"Workload: {args.size_mb} MiB sequential files, {args.random_writes} random 4 KiB writes into 256 MiB, "
             f"{args.files} small files, tar x and git clone of the Python standard library; "
             f"{args.reps} repetitions, interleaved; median [min–max]"
             + (f"; {args.settle:g} s pause before each write phase" if args.settle else "") + ".", "",
             comparison_table(results, "metric"), ""]
    lines += ["| snapshot (cowfs, the client's call: syncfs and the request) | samples | p50 ms | p99 ms "
              "| then until durable ms |", "|---|---|---|---|---|"]
    for name, row in snapshots.items():
        if "p50 ms" in row:
            lines.append(f"| {name} | {row['samples']} | {row['p50 ms']:.2f} | {row['p99 ms']:.2f} "
                         f"| {row['durable ms']:.1f} |")
    lines.append(f"| `cowfs mount <snap>` (CLI, until ready) | 1 | {snapshots['snapshot mount']['ms']:.0f} | | |")
    lines += ["", "| space | value |", "|---|---|"] + [f"| {k} | {v:,} |" for k, v in space.items()]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mb", type=int, default=1024)
    parser.add_argument("--random-writes", type=int, default=20000)
    parser.add_argument("--files", type=int, default=20000)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--snapshot-files", default="1000,10000,100000")
    parser.add_argument("--snapshot-samples", type=int, default=50)
    parser.add_argument("--space-mb", type=int, default=1024)
    parser.add_argument("--scratch", default="/var/tmp")
    parser.add_argument("--settle", type=float, default=0.0,
                        help="seconds to pause before each write phase: a VM disk with a write budget "
                             "(docs/benchmarks.md, session 9) otherwise gives later targets a slower disk")
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="cowfs-bench-", dir=args.scratch))
    try:
        results = run_comparisons(args, scratch)
        snapshots = snapshot_latency(scratch, [int(n) for n in args.snapshot_files.split(",")], args.snapshot_samples)
        space = space_after_change(scratch, args.space_mb)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    text = report(results, snapshots, space, args)
    print(text)
    out = REPO / "bench" / "results"
    out.mkdir(exist_ok=True)
    (out / "latest.json").write_text(json.dumps({"args": vars(args), "comparisons": results,
                                                 "snapshots": snapshots, "space": space}, indent=2))
    (out / "latest.md").write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
