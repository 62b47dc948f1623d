"""Per-cell cost of the kernel extension on a real kernel, and the store size it leaves.

    python bench/kernel_overhead.py [--cells 40] [--runs 10]

Runs a notebook of --cells cells (small computations, file writes, a changing dict, a pickle)
--runs times in fresh kernels inside a cowfs mount, collects how long the pre_run_cell and
post_run_cell hooks took for every cell, and prints median and p99 per cell, next to the same
notebook's wall time with and without the extension. Needs root and /dev/fuse.
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

from nbclient import NotebookClient
from nbformat.v4 import new_code_cell, new_notebook

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import figure_table  # noqa: E402

REPORT = "import json, cowfs.cli.kernel.extension as k\nprint(json.dumps(k._active.timings))"


def cells(count: int) -> list[str]:
    body = ["import json, pickle, random\nfrom pathlib import Path\nstate = {'rows': []}\nrandom.seed(1)"]
    for i in range(1, count - 1):
        kind = i % 4
        if kind == 0:
            body.append(f"x{i} = sum(range({i} * 1000))")
        elif kind == 1:
            body.append("state['rows'].append([random.random() for _ in range(100)])\nlen(state['rows'])")
        elif kind == 2:
            body.append(f"Path('out{i % 5}.json').write_text(json.dumps(state['rows'][-1]))")
        else:
            body.append("with open('state.pkl', 'wb') as f:\n    pickle.dump(state, f)")
    return body


def run(directory: Path, sources: list[str], report: bool) -> tuple[float, list[float]]:
    notebook = new_notebook(cells=[new_code_cell(s) for s in sources + ([REPORT] if report else [])])
    client = NotebookClient(notebook, timeout=120, kernel_name="python3",
                            resources={"metadata": {"path": str(directory)}})
    started = time.perf_counter()
    client.execute()
    wall = time.perf_counter() - started
    if not report:
        return wall, []
    text = "".join(o.get("text", "") for o in notebook.cells[-1].outputs if o.get("name") == "stdout")
    return wall, json.loads(text)


def cowfs(*args: str, env: dict) -> str:
    return subprocess.run([sys.executable, "-m", "cowfs.cli.main", *args], env=env, check=True,
                          capture_output=True, text=True).stdout


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cells", type=int, default=40)
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="cowfs-kbench-", dir="/var/tmp"))
    env = {**os.environ, "COWFS_STORE": str(root / "store"), "IPYTHONDIR": str(root / "ipython")}
    os.environ.update(env)
    mnt, plain = root / "mnt", root / "plain"
    mnt.mkdir()
    plain.mkdir()
    sources = cells(args.cells)
    try:
        cowfs("init", env=env)
        cowfs("mount", str(mnt), env=env)
        walls_plain = [run(plain, sources, report=False)[0] for _ in range(2)]  # no extension
        cowfs("kernel", "install", env=env)
        per_cell: list[float] = []
        walls = []
        for _ in range(args.runs):
            wall, timings = run(mnt, sources, report=True)
            walls.append(wall)
            pairs = timings[:2 * len(sources)]
            per_cell += [(pairs[i] + pairs[i + 1]) * 1000 for i in range(0, len(pairs) - 1, 2)]
        status = json.loads(cowfs("status", "--json", env=env))
        snapshots = len(json.loads(cowfs("log", "--json", env=env)))
    finally:
        if os.path.ismount(mnt):
            cowfs("umount", str(mnt), env=env)
        shutil.rmtree(root, ignore_errors=True)
    per_cell.sort()
    print(f"Notebook: {len(sources)} cells, {args.runs} runs in fresh kernels, cells are stdlib only.\n")
    print(figure_table({
        "hook time per cell (pre + post), median": f"{statistics.median(per_cell):.2f} ms",
        "hook time per cell, p99": f"{per_cell[int(len(per_cell) * 0.99) - 1]:.2f} ms",
        "hook time per cell, max": f"{per_cell[-1]:.2f} ms",
        "cells measured": len(per_cell),
        "notebook wall time without the extension (nbclient, plain dir)": f"{statistics.median(walls_plain):.2f} s",
        "notebook wall time with it (cowfs mount)": f"{statistics.median(walls):.2f} s",
        f"snapshots after {args.runs} runs": snapshots,
        f"store on disk after {args.runs} runs": f"{status['store_bytes'] / 2**20:.2f} MiB",
        "unique chunk bytes (compressed)": f"{status['chunk_stored_bytes'] / 2**10:.1f} KiB",
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
