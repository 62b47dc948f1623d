"""Snapshots through S3: push and pull of a workspace beside a plain upload and download of the
same bytes with the same SDK (boto3) to the same server, and what a second push sends after a
1 MiB change. The server is moto's S3 API server on 127.0.0.1 (what the tests use), so the
figures measure cowfs's own work and request pattern, not a network.

    python bench/remote.py [--size-mb 1024] [--files 64] [--lazy-mb 1024]

The workspace holds --files files totalling --size-mb: half random bytes (parquet, pickles,
images: incompressible), half CSV text. Then one file of --lazy-mb random bytes is added and
pushed in a third snapshot, and read on another machine two ways: through a lazy mount
(`cowfs mount team:SNAP`, in an empty store), and by a pull (into the store that has the rest)
then a read from a mount, beside a plain download of the same file.
Needs root, /dev/fuse and the `remote` and `test` extras (boto3, moto).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "bench"))

from run import cowfs, drop_caches  # noqa: E402
from servers import s3_server  # noqa: E402


def fill(directory: Path, size_mb: int, files: int) -> list[Path]:
    """Half incompressible, half CSV-like text, in ``files`` files."""
    per_file = size_mb * (1 << 20) // files
    written = []
    for number in range(files):
        path = directory / f"data-{number:03d}.{'bin' if number % 2 == 0 else 'csv'}"
        with open(path, "wb") as out:
            if number % 2 == 0:
                out.write(os.urandom(per_file))
            else:
                rows, size, row = [], 0, number * per_file
                while size < per_file:
                    rows.append(b"%d,%d.%04d,label_%d,%d\n" % (row, row * 7 % 1000, row % 9973, row % 17, row * 31))
                    size += len(rows[-1])
                    row += 1
                out.write(b"".join(rows)[:per_file])
        written.append(path)
    return written


def timed(action) -> tuple[float, object]:
    started = time.monotonic()
    result = action()
    return time.monotonic() - started, result


def read_all(path: Path) -> int:
    with open(path, "rb", buffering=0) as handle:
        return sum(len(block) for block in iter(lambda: handle.read(1 << 20), b""))


def lazy_reads(root: Path, mnt: Path, mounts: list[Path], alice: Path, bob: Path, carol: Path, size_mb: int, s3):
    """One large file read on another machine: lazily, and by pull-then-read."""
    big = mnt / "large.bin"
    with open(big, "wb") as out:
        for _ in range(size_mb):
            out.write(os.urandom(1 << 20))
    third = json.loads(cowfs("snap", "--wait", "--json", str(mnt), store=alice))
    cowfs("push", "team", "--json", third["id"], store=alice)
    remote_id = next(s["id"] for s in json.loads(cowfs("log", "--remote", "team", "--json", store=alice))
                     if s["source"]["snapshot"] == third["id"])
    # The same bytes as plain objects of a pack's size: moto's ranged GET copies the whole
    # object, so one 1 GiB object would take minutes to download and say nothing about cowfs.
    part = 16 << 20
    with open(big, "rb") as source:
        pieces = [f"large-{n:04d}" for n in range((big.stat().st_size + part - 1) // part)]
        for name in pieces:
            s3.put_object(Bucket="plain", Key=name, Body=source.read(part))
    drop_caches()
    download, _ = timed(lambda: [s3.download_file("plain", name, str(root / "downloaded" / name)) for name in pieces])

    lazy = root / "lazy"
    mounts.append(lazy)
    mount_time, _ = timed(lambda: cowfs("mount", f"team:{remote_id}", str(lazy), store=carol))
    drop_caches()
    started = time.monotonic()
    with open(lazy / big.name, "rb", buffering=0) as handle:
        handle.read(4096)
    first_byte = time.monotonic() - started
    lazy_read, _ = timed(lambda: read_all(lazy / big.name))

    pulled_at = root / "pulled"
    mounts.append(pulled_at)

    def pull_then_read() -> None:
        local = json.loads(cowfs("pull", "team", remote_id, "--json", store=bob))["local_snapshot"]
        cowfs("mount", local, str(pulled_at), store=bob)
        drop_caches()
        read_all(pulled_at / big.name)

    pull_read, _ = timed(pull_then_read)
    size = big.stat().st_size
    return [
        (f"plain download of {size_mb} MiB (16 MiB objects)", download, size, None),
        ("lazy mount: `cowfs mount team:SNAP DIR`", mount_time, None, None),
        ("lazy mount: first 4 KiB of the file", first_byte, None, None),
        ("lazy mount: the rest of the file, in order", lazy_read, size, lazy_read / download),
        ("pull (the rest was there), mount, read", pull_read, size, pull_read / download),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mb", type=int, default=1024)
    parser.add_argument("--files", type=int, default=64)
    parser.add_argument("--lazy-mb", type=int, default=1024)
    options = parser.parse_args()
    import boto3

    with tempfile.TemporaryDirectory(dir="/var/tmp") as scratch, s3_server() as endpoint:
        root = Path(scratch)
        os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1",
                          AWS_ENDPOINT_URL=endpoint)
        s3 = boto3.client("s3")
        for bucket in ("cowfs", "plain"):
            s3.create_bucket(Bucket=bucket)
        alice, bob, carol, mnt = root / "alice", root / "bob", root / "carol", root / "work"
        mnt.mkdir()
        mounts = [mnt]
        for store in (alice, bob, carol):
            cowfs("init", store=store)
            cowfs("remote", "add", "team", "s3://cowfs/ws", store=store)
        cowfs("mount", str(mnt), store=alice)
        rows = []
        try:
            files = fill(mnt, options.size_mb, options.files)
            first = json.loads(cowfs("snap", "--wait", "--json", str(mnt), store=alice))
            total = sum(path.stat().st_size for path in files)

            upload, _ = timed(lambda: [s3.upload_file(str(p), "plain", p.name) for p in files])
            downloads = root / "downloaded"
            downloads.mkdir()
            download, _ = timed(lambda: [s3.download_file("plain", p.name, str(downloads / p.name)) for p in files])

            push_time, push_out = timed(lambda: cowfs("push", "team", "--json", first["id"], store=alice))
            pushed = json.loads(push_out)
            remote_id = json.loads(cowfs("log", "--remote", "team", "--json", store=alice))[0]["id"]
            pull_time, pull_out = timed(lambda: cowfs("pull", "team", remote_id, "--json", store=bob))
            pulled = json.loads(pull_out)

            with open(files[1], "r+b") as changed:  # 1 MiB rewritten in the middle of one file
                changed.seek(len(files[1].read_bytes()) // 2)
                changed.write(os.urandom(1 << 20))
            second = json.loads(cowfs("snap", "--wait", "--json", str(mnt), store=alice))
            again_time, again_out = timed(lambda: cowfs("push", "team", "--json", second["id"], store=alice))
            again = json.loads(again_out)
            lazy_rows = lazy_reads(root, mnt, mounts, alice, bob, carol, options.lazy_mb, s3)
            rows = [
                ("plain upload (boto3 upload_file)", upload, total, None),
                ("cowfs push", push_time, pushed["bytes_uploaded"], push_time / upload),
                ("plain download (boto3 download_file)", download, total, None),
                ("cowfs pull into an empty store", pull_time, pulled["bytes_downloaded"], pull_time / download),
                ("cowfs push after a 1 MiB change", again_time, again["bytes_uploaded"], None),
                *lazy_rows,
            ]
        finally:
            for mounted in mounts:
                subprocess.run([sys.executable, "-m", "cowfs.cli.main", "umount", str(mounted)], capture_output=True)
    print(f"\nS3 push/pull: {options.size_mb} MiB in {options.files} files (half random, half CSV), "
          f"moto server on 127.0.0.1")
    print(f"{'step':40} {'seconds':>9} {'bytes moved':>14} {'x plain':>8}")
    for name, seconds, moved, ratio in rows:
        print(f"{name:40} {seconds:9.3f} {'' if moved is None else f'{moved:,}':>14} "
              f"{'' if ratio is None else f'{ratio:.2f}x':>8}")
    print(f"(pushed {pushed['chunks_sent']} chunks in {pushed['requests']} requests; pulled "
          f"{pulled['chunks_fetched']} chunks in {pulled['requests']} requests; the second push: "
          f"{again['requests']} requests)")


if __name__ == "__main__":
    main()
