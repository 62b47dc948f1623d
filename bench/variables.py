"""What saving variables adds to a cell, by namespace size, in a real kernel.

    python bench/variables.py [--sizes 0,256,1024] [--reps 7]

For each size S (MiB) the kernel holds a float64 DataFrame of S MiB and a numpy array of S MiB
and runs, --reps times each, cells that touch nothing (``y = 1``), change one value of the
frame, replace a column, and fit a small scikit-learn model. Each cell's time from execute to
reply is measured in four set-ups in one run: a native directory and a minimal pyfuse3
passthrough without the extension, a cowfs mount with it, and a cowfs mount with it in
today's-before-tracking full-pickle mode (COWFS_VARS_MODE=full). Also: the extension's own
hook time, bytes the store gains per cell, peak RSS of the kernel, and the time
``%cowfs restore SNAP NAME`` takes per variable beside reading the same bytes from the mount.
Needs root and /dev/fuse.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from jupyter_client.manager import start_new_kernel

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import figure_table  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
CELLS = {
    "touch nothing (y = 1)": "y = 1",
    "change one value (df.iloc[0, 0] = -i)": "df.iloc[0, 0] = -{i}",
    "replace a column (df['c0'] = df['c0'] + 1)": "df['c0'] = df['c0'] + 1",
    "fit a small model (LogisticRegression)": "model = LogisticRegression(max_iter=200).fit(X, labels)",
    "pure-Python loop at top level (10^6 steps)": "total = 0\nfor k in range(1_000_000):\n    total += k",
}
# Seeds differ by size: the sizes share one store, and the first rows of one size's frame would
# otherwise be the same bytes as the smaller one's (deduplicated: a change would add nothing).
SETUP = """
import numpy as np, pandas as pd
from sklearn.linear_model import LogisticRegression
rows = max({size} * 2**20 // 64, 1)
df = pd.DataFrame(np.random.default_rng(1 + {size}).random((rows, 8)), columns=[f'c{{i}}' for i in range(8)])
arr = np.random.default_rng(2 + {size}).random({size} * 2**20 // 8)
X = np.random.default_rng(3).random((2000, 10)); labels = (X[:, 0] > 0.5).astype(int)
"""
ACTIVE = "__import__('cowfs.cli.kernel.extension', fromlist=['x'])._active"
HOOKS = f"{ACTIVE}.timings"
SETTLE = f"{ACTIVE}.saver.settle()"  # wait for a background write, outside the measured time


def quiet(message: dict) -> None:
    """Cells' own output is not part of the report."""


def cowfs(*args: str) -> str:
    return subprocess.run([sys.executable, "-m", "cowfs.cli.main", *args], check=True, capture_output=True,
                          text=True).stdout


def stored_bytes(mnt: Path) -> int:
    from cowfs.cli.client import request
    from cowfs.fs.store import Store

    request(mnt, {"op": "flush"})
    store = Store.open(Path(os.environ["COWFS_STORE"]), readonly=True)
    try:
        return store.stats()["chunk_stored_bytes"]
    finally:
        store.close()


def expression(client, code: str):
    reply = client.execute_interactive("", silent=True, user_expressions={"v": code}, timeout=600)
    value = reply["content"]["user_expressions"]["v"]
    assert value["status"] == "ok", value
    return eval(value["data"]["text/plain"])


def kernel_in(directory: Path, ipython_dir: Path, extra_env: dict | None = None):
    env = {**os.environ, "IPYTHONDIR": str(ipython_dir), **(extra_env or {})}
    return start_new_kernel(kernel_name="python3", cwd=str(directory), env=env)


def run_setup(directory: Path, ipython_dir: Path, size: int, reps: int, measure_store: bool,
              extra_env: dict | None = None) -> dict:
    manager, client = kernel_in(directory, ipython_dir, extra_env)
    try:
        client.execute_interactive(SETUP.format(size=size), timeout=600, output_hook=quiet)
        pid = expression(client, "__import__('os').getpid()")
        hooks_before = len(expression(client, HOOKS)) if measure_store else 0
        times: dict[str, list[float]] = {name: [] for name in CELLS}
        added: dict[str, list[int]] = {name: [] for name in CELLS}
        hooks: dict[str, list[float]] = {name: [] for name in CELLS}
        for i in range(reps):
            for name, cell in CELLS.items():
                before = stored_bytes(directory) if measure_store else 0
                started = time.perf_counter()
                client.execute_interactive(cell.format(i=i + 2), timeout=600, output_hook=quiet)
                times[name].append((time.perf_counter() - started) * 1000)
                if measure_store:
                    expression(client, SETTLE)
                    added[name].append(stored_bytes(directory) - before)
                    timings = expression(client, HOOKS)
                    hooks[name].append(sum(timings[hooks_before:]) * 1000)
                    hooks_before = len(timings)
        if measure_store:
            expression(client, SETTLE)
        status = Path(f"/proc/{pid}/status").read_text()
        peak = int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM"))) // 1024
        children = expression(client, "__import__('resource').getrusage(__import__('resource').RUSAGE_CHILDREN)"
                                      ".ru_maxrss // 1024")
        return {"times": times, "added": added, "hooks": hooks, "peak_mib": peak, "child_peak_mib": children}
    finally:
        client.stop_channels()
        manager.shutdown_kernel(now=True)


def restore_times(mnt: Path, ipython_dir: Path) -> dict[str, tuple[float, float, int]]:
    """Per variable: restore time, time to read its buffer files from the mount, bytes."""
    from cowfs.fs.store import Store

    cowfs("snap", "--wait", "-m", "bench settle", str(mnt))
    store = Store.open(Path(os.environ["COWFS_STORE"]), readonly=True)
    try:
        last = [r for r in store.snapshots() if r.meta.get("phase") == "after"][-1]
    finally:
        store.close()
    session = mnt / last.meta["vars"]
    manifest = json.loads((session / "manifest.json").read_text())
    results = {}
    for name in ("df", "arr"):
        group = manifest["groups"][manifest["names"][name]["group"]]
        files = [session / b["file"] for b in group["buffers"]]
        subprocess.run(["sh", "-c", "sync; echo 3 > /proc/sys/vm/drop_caches"], check=True)
        started = time.perf_counter()
        size = sum(len(f.read_bytes()) for f in files)
        read = time.perf_counter() - started
        manager, client = kernel_in(mnt, ipython_dir)
        try:
            client.execute_interactive("import numpy, pandas", timeout=60, output_hook=quiet)  # not the restore
            subprocess.run(["sh", "-c", "sync; echo 3 > /proc/sys/vm/drop_caches"], check=True)
            started = time.perf_counter()
            client.execute_interactive(f"%cowfs restore {last.name} {name}", timeout=600, output_hook=quiet)
            restore = time.perf_counter() - started
        finally:
            client.stop_channels()
            manager.shutdown_kernel(now=True)
        results[name] = (restore, read, size)
    return results


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="0,256,1024", help="MiB of frame and of array, comma-separated")
    parser.add_argument("--reps", type=int, default=7)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    root = Path(tempfile.mkdtemp(prefix="cowfs-vbench-", dir="/var/tmp"))
    os.environ["COWFS_STORE"] = str(root / "store")
    os.environ["XDG_CONFIG_HOME"] = str(root / "config")  # the variables' signing key
    plain, backing, passthrough, mnt = root / "plain", root / "backing", root / "pass", root / "mnt"
    for directory in (plain, backing, passthrough, mnt):
        directory.mkdir()
    bare, with_ext = root / "ipython-bare", root / "ipython-cowfs"
    os.environ["IPYTHONDIR"] = str(with_ext)
    cowfs("init")
    cowfs("kernel", "install")
    cowfs("mount", str(mnt))
    proxy = subprocess.Popen([sys.executable, str(REPO / "bench" / "passthrough.py"), str(backing), str(passthrough)])
    print(f"Parameters: {{\"sizes_mib\": {sizes}, \"reps\": {args.reps}, \"cells\": {len(CELLS)}}}; "
          "namespace = a float64 DataFrame of S MiB + a numpy array of S MiB; per-cell figures are time from "
          "execute to reply, median [p99] ms.\n")
    try:
        while not os.path.ismount(passthrough):
            time.sleep(0.05)
        for size in sizes:
            native = run_setup(plain, bare, size, args.reps, False)
            proxied = run_setup(passthrough, bare, size, args.reps, False)
            tracked = run_setup(mnt, with_ext, size, args.reps, True)
            restored = restore_times(mnt, with_ext) if size else {}
            full = run_setup(mnt, with_ext, size, max(2, args.reps // 2), True, {"COWFS_VARS_MODE": "full"})
            print(f"### namespace: frame {size} MiB + array {size} MiB\n")
            print("| cell | native, no extension | passthrough, no extension | cowfs + extension | "
                  "cowfs + full pickle | added by extension (median) | cowfs/native | hook ms median [p99] | "
                  "store bytes added per cell, median (full pickle) |")
            print("|---|---|---|---|---|---|---|---|---|")
            for name in CELLS:
                n, p, t, f = (r["times"][name] for r in (native, proxied, tracked, full))
                cell = lambda v: f"{statistics.median(v):,.1f} [{pct(v, 0.99):,.1f}]"  # noqa: E731
                print(f"| {name} | {cell(n)} | {cell(p)} | {cell(t)} | {cell(f)} | "
                      f"{statistics.median(t) - statistics.median(n):,.1f} | "
                      f"{statistics.median(t) / statistics.median(n):.2f} | {cell(tracked['hooks'][name])} | "
                      f"{statistics.median(tracked['added'][name]):,.0f} ({statistics.median(full['added'][name]):,.0f}) |")
            print()
            print(figure_table({"kernel peak RSS MiB: native / cowfs / full pickle":
                                f"{native['peak_mib']} / {tracked['peak_mib']} / {full['peak_mib']}",
                                "peak RSS of a background-writing child MiB (its pages are the kernel's, shared)":
                                tracked["child_peak_mib"],
                                "namespace MiB": 2 * size}))
            print()
            if restored:
                print(figure_table({f"%cowfs restore of {name} ({size_b / 2**20:,.0f} MiB): restore s / "
                                    "read of its bytes from the mount s / ratio":
                                    f"{r:.2f} / {rd:.2f} / {r / rd:.2f}" for name, (r, rd, size_b) in restored.items()}))
                print()
    finally:
        cowfs("umount", str(mnt))
        subprocess.run(["fusermount3", "-u", str(passthrough)], check=False)
        proxy.wait(timeout=30)
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
