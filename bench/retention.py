"""Space before and after `cowfs prune` + `cowfs gc` on a store with many per-cell snapshots.

    python bench/retention.py [--cells 1000] [--keep-last 50]

Each simulated cell rewrites a CSV (a few % of it changes), appends to a log, rewrites a small
model pickle and, every 50th cell, writes a fresh 4 MiB array; a snapshot follows each cell,
as the kernel extension takes them. Needs root and /dev/fuse.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from run import cowfs, figure_table, target  # noqa: E402

from cowfs.cli.client import snapshot  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cells", type=int, default=1000)
    parser.add_argument("--keep-last", type=int, default=50)
    args = parser.parse_args()
    rng = random.Random(5)
    scratch = Path(tempfile.mkdtemp(prefix="cowfs-retention-", dir="/var/tmp"))
    try:
        with target("cowfs", scratch) as mnt:
            store = mnt.parent / "store"
            rows = [f"{i},{rng.random():.6f},{rng.random():.6f}\n" for i in range(20000)]
            for cell in range(args.cells):
                for _ in range(400):
                    rows[rng.randrange(len(rows))] = f"{cell},{rng.random():.6f},{rng.random():.6f}\n"
                (mnt / "table.csv").write_text("".join(rows))
                with open(mnt / "log.txt", "a") as log:
                    log.write(f"cell {cell}\n")
                (mnt / "model.pkl").write_bytes(os.urandom(20_000))
                if cell % 50 == 0:
                    (mnt / f"array{cell // 50 % 4}.npy").write_bytes(os.urandom(4 << 20))
                snapshot(mnt, f"after cell {cell}")
            snapshot(mnt, "end", wait=True)
            before = json.loads(cowfs("status", "--json", store=store))
            started = time.perf_counter()
            pruned = json.loads(cowfs("prune", "--keep-last", str(args.keep_last), "--json", store=store))
            gc = json.loads(cowfs("gc", "--json", store=store))
            seconds = time.perf_counter() - started
            after = json.loads(cowfs("status", "--json", store=store))
            fsck = cowfs("fsck", store=store).strip().splitlines()[-1]
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print(f"{args.cells} cells, one snapshot each, then prune --keep-last {args.keep_last} and gc (mount live)\n")
    print(figure_table({
        "snapshots before / after": f"{before['snapshots']} / {after['snapshots']}",
        "store on disk before prune": f"{before['store_bytes'] / 2**20:.1f} MiB",
        "store on disk after gc": f"{after['store_bytes'] / 2**20:.1f} MiB",
        "unique chunk bytes before / after": f"{before['chunk_stored_bytes'] / 2**20:.1f} / "
                                             f"{after['chunk_stored_bytes'] / 2**20:.1f} MiB",
        "gc: versions, chunks removed; packs rewritten, deleted": f"{gc['versions_removed']}, {gc['chunks_removed']}; "
                                                                  f"{gc['packs_rewritten']}, {gc['packs_deleted']}",
        "prune + gc time": f"{seconds:.1f} s",
        "removed by prune": len(pruned["removed"]),
        "fsck after": fsck,
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
