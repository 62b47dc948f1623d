"""What a data scientist does in the workspace all day, on a native directory, the minimal pyfuse3
passthrough and cowfs, interleaved in one run, as ratios.

    python bench/workloads.py [--reps 2] [--csv-mb 1024] [--repo-files 2000] [--packages "numpy pandas scikit-learn scipy"]

V. `python -m venv` + `pip install` of --packages from a local wheel directory (prepared once
   with `pip download`, so the network is not measured).
I. `import pandas, sklearn.ensemble, scipy.stats` from that venv: warm (second run onwards) and
   cold (after dropping the kernel's caches).
G. `git clone --no-local` of a --repo-files repository, `git status`, and `git checkout` of a
   commit that changes a quarter of the files, adds and deletes a tenth, and back.
C. pandas `to_csv` of a --csv-mb frame, then `read_csv` of it with the caches dropped.
Needs root, /dev/fuse, bench/setup.sh (pandas) and PyPI for the wheels.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))

from run import TARGETS, comparison_table, drop_caches, in_turn, machine, source_tree, target, timed  # noqa: E402

IMPORTS = "import pandas, sklearn.ensemble, scipy.stats"
GIT = ["git", "-c", "user.email=b@e", "-c", "user.name=b", "-c", "advice.detachedHead=false"]
# What FUSE itself costs here: a filesystem that does no work of its own, against native. A goal
# this misses is one that only fewer requests than libfuse's example makes could meet.
FLOOR = ("C passthrough", "native")


def run(*command: str, cwd: Path | None = None) -> None:
    result = subprocess.run(command, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if result.returncode:
        raise RuntimeError(f"{' '.join(command)} failed: {result.stderr.strip()[-2000:]}")


def prepare_wheels(scratch: Path, packages: list[str]) -> Path:
    wheels = scratch / "wheels"
    wheels.mkdir()
    run(sys.executable, "-m", "pip", "download", "-q", "--only-binary=:all:", "-d", str(wheels), *packages)
    return wheels


def prepare_repository(scratch: Path, files: int) -> Path:
    """A repository of `files` real source files (from the standard library) with two commits
    far enough apart that a checkout rewrites, adds and deletes many files."""
    _, stdlib_repo, _ = source_tree(scratch)
    sources = sorted(p for p in stdlib_repo.rglob("*.py") if ".git" not in p.parts)[:files]
    repo = scratch / f"repo-{files}"
    for index, source in enumerate(sources):
        destination = repo / source.relative_to(stdlib_repo)
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, destination)
    git = [*GIT, "-C", str(repo)]
    run(*git, "init", "-q", "-b", "main")
    run(*git, "add", "-A")
    run(*git, "commit", "-qm", "first")
    run(*git, "tag", "first")
    tracked = sorted(p for p in repo.rglob("*.py") if ".git" not in p.parts)
    for index, path in enumerate(tracked):
        if index % 4 == 0:
            path.write_bytes(path.read_bytes() + b"\n# changed\n")
        elif index % 10 == 1:
            path.unlink()
    for index in range(len(tracked) // 10):
        (repo / "added" / f"d{index % 20}").mkdir(parents=True, exist_ok=True)
        (repo / "added" / f"d{index % 20}" / f"module{index}.py").write_text(f"VALUE = {index}\n" * 40)
    run(*git, "add", "-A")
    run(*git, "commit", "-qm", "second")
    run(*git, "tag", "second")
    return repo


def python_workloads(mnt: Path, wheels: Path, packages: list[str]) -> dict[str, float]:
    venv = mnt / "venv"
    python = str(venv / "bin" / "python")

    def install() -> None:
        run(sys.executable, "-m", "venv", str(venv))
        run(python, "-m", "pip", "install", "-q", "--no-index", "--find-links", str(wheels), *packages)

    figures = {f"venv + pip install {len(packages)} packages, s": timed(install)}
    run(python, "-c", IMPORTS)  # the first import writes __pycache__: not what a user waits for daily
    figures["import, warm, s"] = statistics.median(timed(lambda: run(python, "-c", IMPORTS)) for _ in range(3))
    drop_caches()
    figures["import, caches dropped, s"] = timed(lambda: run(python, "-c", IMPORTS))
    return figures


def git_workloads(mnt: Path, repo: Path) -> dict[str, float]:
    clone = mnt / "clone"
    figures = {"git clone --no-local, s": timed(lambda: run(*GIT, "clone", "-q", "--no-local", str(repo), str(clone)))}
    figures["git status, s"] = timed(lambda: run(*GIT, "status", "--porcelain", cwd=clone))
    figures["git checkout and back, s"] = timed(lambda: (run(*GIT, "checkout", "-q", "first", cwd=clone),
                                                          run(*GIT, "checkout", "-q", "second", cwd=clone)))
    return figures


def csv_workloads(mnt: Path, megabytes: int) -> dict[str, float]:
    import numpy
    import pandas

    rows = megabytes * 2**20 // 64  # about 64 bytes per row once written
    rng = numpy.random.default_rng(3)
    frame = pandas.DataFrame({"id": numpy.arange(rows), "x": rng.random(rows), "y": rng.random(rows),
                              "label": rng.choice(["cat", "dog", "eel"], rows)})
    path = mnt / "frame.csv"
    figures = {f"to_csv {megabytes} MiB, s": timed(lambda: frame.to_csv(path, index=False))}
    drop_caches()
    figures[f"read_csv {megabytes} MiB, caches dropped, s"] = timed(lambda: pandas.read_csv(path))
    path.unlink()
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--csv-mb", type=int, default=1024)
    parser.add_argument("--repo-files", type=int, default=2000)
    parser.add_argument("--packages", default="numpy pandas scikit-learn scipy")
    parser.add_argument("--only", default="python,git,csv", help="comma-separated subset of python,git,csv")
    parser.add_argument("--scratch", default="/var/tmp")
    args = parser.parse_args()
    packages = args.packages.split()
    only = set(args.only.split(","))
    scratch = Path(tempfile.mkdtemp(prefix="cowfs-workloads-", dir=args.scratch))
    results: dict[str, dict[str, list[float]]] = {kind: {} for kind in TARGETS}
    try:
        wheels = prepare_wheels(scratch, packages) if "python" in only else None
        repo = prepare_repository(scratch, args.repo_files) if "git" in only else None
        for rep in range(args.reps):
            for kind in in_turn(rep):  # interleaved: drift in the machine hits every target alike
                with target(kind, scratch) as mnt:
                    figures: dict[str, float] = {}
                    if wheels:
                        figures.update(python_workloads(mnt, wheels, packages))
                    if repo:
                        figures.update(git_workloads(mnt, repo))
                    if "csv" in only:
                        figures.update(csv_workloads(mnt, args.csv_mb))
                for metric, value in figures.items():
                    results[kind].setdefault(metric, []).append(value)
                print(f"  rep {rep + 1} {kind} done", file=sys.stderr)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print(machine())
    print(f"Workloads: {args.packages} from local wheels; a {args.repo_files}-file repository; "
          f"{args.csv_mb} MiB CSV; {args.reps} repetitions, interleaved; seconds, median [min–max]; "
          "ratios are time over time (lower is faster).\n")
    print(comparison_table(results, "workload", also=[FLOOR]))
    if set(FLOOR) <= set(TARGETS):
        print(f"\n{FLOOR[0]}/{FLOOR[1]}: libfuse's own example, which stores nothing and answers each request "
              "with a system call or two, against native: what FUSE itself costs on this machine "
              "(docs/benchmarks.md, session 22).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
