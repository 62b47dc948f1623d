"""Space and versioning beside the tools users would pick instead, and the daemon's footprint.

    python bench/peers.py [--csv-mb 100] [--versions 10] [--files 20000] [--snapshots 1000]

E. Ten versions of a CSV written by pandas (about 1% of rows changed and some rows inserted
   each time) and ten pickle.dump()s of a slowly changing object: bytes stored per version by
   cowfs, borg, dvc (its cache) and git (after `git gc`), against the raw size.
P. Time to record one version of the same workspace: `cowfs snap`, `git add -A && git commit`,
   `dvc add` + `git commit`, `borg create`, and a btrfs snapshot on a loop device.
G. Daemon peak RSS while writing --files files (2 GiB in all by default) and taking
   --snapshots snapshots; index bytes per file and per snapshot with nothing changed.
Needs root, /dev/fuse and bench/setup.sh.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import random
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))

from run import target, timed  # noqa: E402

from cowfs.cli.client import request, snapshot  # noqa: E402


DVC = REPO / ".venv-dvc" / "bin" / "dvc"  # bench/setup.sh installs it apart from cowfs's venv


def git_commit(work: Path, *paths: str, message: str = "v") -> None:
    git = ["git", "-C", str(work), "-c", "user.email=b@e", "-c", "user.name=b"]
    subprocess.run(git + ["add", *(paths or ["-A"])], check=True)
    subprocess.run(git + ["commit", "-qm", message], check=True)


def dvc_add(work: Path, target: str) -> None:
    """What a DVC user does to record a version: `dvc add`, then commit the pointer file."""
    subprocess.run([str(DVC), "add", "-q", target], cwd=work, check=True, capture_output=True)
    git_commit(work, f"{target}.dvc", ".gitignore")


def dvc_repo(work: Path) -> bool:
    """A git repository with DVC initialised, or False when DVC is not installed."""
    subprocess.run(["git", "init", "-q", str(work)], check=True)
    if not DVC.exists():
        return False
    subprocess.run([str(DVC), "init", "-q"], cwd=work, check=True, capture_output=True)
    subprocess.run([str(DVC), "config", "core.autostage", "false"], cwd=work, check=True, capture_output=True)
    return True


def du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def store_bytes(store: Path) -> int:
    """Packs plus the LMDB pages in use (the file itself is sparse-grown in big steps)."""
    import lmdb

    env = lmdb.open(str(store / "index.lmdb"), readonly=True, lock=False, max_dbs=16)
    info, stat = env.info(), env.stat()
    env.close()
    return du(store / "packs") + (info["last_pgno"] + 1) * stat["psize"]


def index_tree_bytes(store: Path) -> int:
    """The pages the index's tables occupy, without the free pages LMDB keeps for reuse (which
    make the file's high-water mark a poor measure of what one more record costs)."""
    import lmdb

    from cowfs.fs.keys import ALL_DBS

    env = lmdb.open(str(store / "index.lmdb"), readonly=True, lock=False, max_dbs=16)
    try:
        with env.begin() as txn:
            stats = [txn.stat(env.open_db(name, txn=txn, create=False)) for name in ALL_DBS]
    finally:
        env.close()
    return sum(s["psize"] * (s["branch_pages"] + s["leaf_pages"] + s["overflow_pages"]) for s in stats)


def csv_versions(directory: Path, mb: int, versions: int):
    """Yield after writing each version of data.csv (pandas), with the file's size."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(0)
    rows = mb * 2**20 // 60
    frame = pd.DataFrame({"id": np.arange(rows), "x": rng.random(rows), "y": rng.normal(size=rows),
                          "label": rng.choice(["cat", "dog", "eel"], rows)})
    for version in range(versions):
        if version:
            changed = rng.choice(rows, rows // 100, replace=False)
            frame.loc[changed, "x"] = rng.random(len(changed))
            inserted = frame.sample(200, random_state=version).assign(id=-version)
            frame = pd.concat([frame.iloc[: rows // 2], inserted, frame.iloc[rows // 2:]], ignore_index=True)
        frame.to_csv(directory / "data.csv", index=False)
        yield (directory / "data.csv").stat().st_size


def pickle_versions(directory: Path, versions: int):
    state = {"weights": [random.Random(1).random() for _ in range(300_000)], "epoch": 0}
    for version in range(versions):
        state["epoch"] = version
        for i in range(0, len(state["weights"]), 997):
            state["weights"][i] += 0.001
        with open(directory / "model.pkl", "wb") as handle:
            pickle.dump(state, handle)
        yield (directory / "model.pkl").stat().st_size


def space(args: argparse.Namespace, scratch: Path) -> dict:
    results = {}
    for name, make in (("pandas CSV", lambda d: csv_versions(d, args.csv_mb, args.versions)),
                       ("pickle", lambda d: pickle_versions(d, args.versions))):
        with target("cowfs", scratch) as mnt:
            store = mnt.parent / "store"
            work = Path(tempfile.mkdtemp(dir=scratch))
            borg_repo = scratch / f"borg-{os.getpid()}-{len(results)}"
            env = {**os.environ, "BORG_PASSPHRASE": "", "BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK": "yes"}
            subprocess.run(["borg", "init", "-e", "none", str(borg_repo)], check=True, env=env, capture_output=True)
            subprocess.run(["git", "init", "-q", str(work)], check=True)
            dvc_work = Path(tempfile.mkdtemp(dir=scratch))
            has_dvc = dvc_repo(dvc_work)
            raw = 0
            for version, size in enumerate(make(mnt)):
                raw += size
                snapshot(mnt, f"v{version}", wait=True)
                written = next(p for p in mnt.iterdir() if p.is_file())
                shutil.copy2(written, work)
                subprocess.run(["borg", "create", f"{borg_repo}::v{version}", "."], cwd=work, check=True, env=env,
                               capture_output=True)
                git_commit(work, message=f"v{version}")
                if has_dvc:
                    shutil.copy2(written, dvc_work)
                    dvc_add(dvc_work, written.name)
            subprocess.run(["git", "-C", str(work), "gc", "-q", "--aggressive"], check=True)
            results[name] = {"raw bytes per version": raw // args.versions,
                             "cowfs bytes per version": store_bytes(store) // args.versions,
                             "borg bytes per version": du(borg_repo) // args.versions,
                             "dvc cache bytes per version": (du(dvc_work / ".dvc" / "cache") // args.versions
                                                             if has_dvc else "not installed (bench/setup.sh)"),
                             "git (after gc) bytes per version": du(work / ".git") // args.versions}
            shutil.rmtree(work, ignore_errors=True)
            shutil.rmtree(dvc_work, ignore_errors=True)
            shutil.rmtree(borg_repo, ignore_errors=True)
    return results


def peers(scratch: Path, files: int) -> dict:
    """Record one version of a workspace of ``files`` small files plus 256 MiB of data."""
    def populate(root: Path) -> None:
        root.mkdir(exist_ok=True)
        for i in range(files):
            directory = root / f"d{i % 100}"
            directory.mkdir(exist_ok=True)
            (directory / f"f{i}.txt").write_text(f"row {i}\n" * 20)
        (root / "big.bin").write_bytes(os.urandom(256 << 20))

    out = {}
    with target("cowfs", scratch) as mnt:
        populate(mnt)
        out["cowfs snap --wait"] = timed(lambda: snapshot(mnt, "v", wait=True))
        out["cowfs snap (taken)"] = timed(lambda: snapshot(mnt, "v2"))
    work = Path(tempfile.mkdtemp(dir=scratch))
    populate(work)
    subprocess.run(["git", "init", "-q", str(work)], check=True)
    out["git add -A && git commit"] = timed(lambda: git_commit(work))
    dvc_work = Path(tempfile.mkdtemp(dir=scratch))
    if dvc_repo(dvc_work):
        populate(dvc_work / "data")
        out["dvc add + git commit"] = timed(lambda: dvc_add(dvc_work, "data"))
    else:
        out["dvc add + git commit"] = "not installed (bench/setup.sh)"
    shutil.rmtree(dvc_work, ignore_errors=True)
    env = {**os.environ, "BORG_PASSPHRASE": "", "BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK": "yes"}
    repo = scratch / "borg-peers"
    subprocess.run(["borg", "init", "-e", "none", str(repo)], check=True, env=env, capture_output=True)
    out["borg create"] = timed(lambda: subprocess.run(["borg", "create", f"{repo}::v", "."], cwd=work, check=True,
                                                      env=env, capture_output=True))
    shutil.rmtree(work, ignore_errors=True)
    out["btrfs subvolume snapshot"] = btrfs_snapshot_time(scratch, populate)
    return out


def btrfs_snapshot_time(scratch: Path, populate) -> float | str:
    image, mnt = scratch / "btrfs.img", scratch / "btrfs"
    mnt.mkdir()
    try:
        with open(image, "wb") as handle:
            handle.truncate(2 << 30)
        subprocess.run(["mkfs.btrfs", "-q", str(image)], check=True, capture_output=True)
        subprocess.run(["mount", "-o", "loop", str(image), str(mnt)], check=True, capture_output=True)
    except (subprocess.CalledProcessError, FileNotFoundError) as exc:
        return f"unavailable ({exc})"
    try:
        subprocess.run(["btrfs", "subvolume", "create", str(mnt / "work")], check=True, capture_output=True)
        populate(mnt / "work")
        os.sync()
        return timed(lambda: subprocess.run(["btrfs", "subvolume", "snapshot", "-r", str(mnt / "work"),
                                             str(mnt / "snap")], check=True, capture_output=True))
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


def footprint(scratch: Path, files: int, total_mb: int, snapshots: int) -> dict:
    with target("cowfs", scratch) as mnt:
        pid = request(mnt, {"op": "status"})["pid"]
        store = mnt.parent / "store"
        size = total_mb * 2**20 // files
        payload = os.urandom(size + 4096)
        for i in range(files):
            directory = mnt / f"d{i % 200}"
            directory.mkdir(exist_ok=True)
            offset = i % 4096
            (directory / f"f{i}").write_bytes(payload[offset:offset + size])
        snapshot(mnt, "written", wait=True)
        index_after_files = index_tree_bytes(store)
        for i in range(snapshots):
            snapshot(mnt, f"s{i}")
        snapshot(mnt, "end", wait=True)
        rss = peak_rss_kib(pid)
        index_after_snaps = index_tree_bytes(store)
    return {"daemon peak RSS MiB": round(rss / 1024, 1), "files": files, "MiB written": total_mb,
            "index bytes per file": index_after_files // files,
            "index bytes per unchanged snapshot": (index_after_snaps - index_after_files) // max(1, snapshots)}


def peak_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--csv-mb", type=int, default=100)
    parser.add_argument("--versions", type=int, default=10)
    parser.add_argument("--files", type=int, default=20000)
    parser.add_argument("--total-mb", type=int, default=2048)
    parser.add_argument("--snapshots", type=int, default=1000)
    parser.add_argument("--peer-files", type=int, default=5000)
    parser.add_argument("--scratch", default="/var/tmp")
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="cowfs-peers-", dir=args.scratch))
    try:
        report = {"space": space(args, scratch), "record one version (s)": peers(scratch, args.peer_files),
                  "footprint": footprint(scratch, args.files, args.total_mb, args.snapshots)}
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print(f"Parameters: {json.dumps(vars(args))}\n")
    for section, rows in report.items():
        print(f"| {section} | value |\n|---|---|")
        for key, value in rows.items():
            if isinstance(value, dict):
                print(f"| {key} | " + ", ".join(f"{k}: {v:,}" if isinstance(v, int) else f"{k}: {v}"
                                                for k, v in value.items()) + " |")
            else:
                print(f"| {key} | {value:,.3f} |" if isinstance(value, float) else f"| {key} | {value} |")
        print()
    out = REPO / "bench" / "results"
    out.mkdir(exist_ok=True)
    (out / "peers.json").write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
