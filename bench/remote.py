"""Snapshots through S3: push and pull of a workspace beside a plain upload and download of the
same bytes with the same SDK (boto3) to the same server, and what a second push sends after a
1 MiB change. The server is moto's S3 API server on 127.0.0.1 (what the tests use), so the
figures measure cowfs's own work and request pattern, not a network.

    python bench/remote.py [--size-mb 1024] [--files 64]

The workspace holds --files files totalling --size-mb: half random bytes (parquet, pickles,
images: incompressible), half CSV text. The lazy mount (`cowfs mount team:SNAP`) is not built
yet, so it has no row.
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

from run import cowfs  # noqa: E402
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mb", type=int, default=1024)
    parser.add_argument("--files", type=int, default=64)
    options = parser.parse_args()
    import boto3

    with tempfile.TemporaryDirectory(dir="/var/tmp") as scratch, s3_server() as endpoint:
        root = Path(scratch)
        os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1",
                          AWS_ENDPOINT_URL=endpoint)
        s3 = boto3.client("s3")
        for bucket in ("cowfs", "plain"):
            s3.create_bucket(Bucket=bucket)
        alice, bob, mnt = root / "alice", root / "bob", root / "work"
        mnt.mkdir()
        for store in (alice, bob):
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
            rows = [
                ("plain upload (boto3 upload_file)", upload, total, None),
                ("cowfs push", push_time, pushed["bytes_uploaded"], push_time / upload),
                ("plain download (boto3 download_file)", download, total, None),
                ("cowfs pull into an empty store", pull_time, pulled["bytes_downloaded"], pull_time / download),
                ("cowfs push after a 1 MiB change", again_time, again["bytes_uploaded"], None),
            ]
        finally:
            subprocess.run([sys.executable, "-m", "cowfs.cli.main", "umount", str(mnt)], capture_output=True)
    print(f"\nS3 push/pull: {options.size_mb} MiB in {options.files} files (half random, half CSV), "
          f"moto server on 127.0.0.1")
    print(f"{'step':40} {'seconds':>9} {'bytes moved':>14} {'x plain':>8}")
    for name, seconds, moved, ratio in rows:
        print(f"{name:40} {seconds:9.2f} {moved:14,} {'' if ratio is None else f'{ratio:.2f}x':>8}")
    print(f"(pushed {pushed['chunks_sent']} chunks in {pushed['requests']} requests; pulled "
          f"{pulled['chunks_fetched']} chunks in {pulled['requests']} requests; the second push: "
          f"{again['requests']} requests)")


if __name__ == "__main__":
    main()
