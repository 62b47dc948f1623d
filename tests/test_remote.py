"""Snapshots through a real S3 API server (moto's server mode, over HTTP on 127.0.0.1), driven by
the real CLI with AWS credential conventions: push, log --remote, pull into another store, and
dedup across the network."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import servers
from conftest import Workspace, drop_caches, needs_fuse, run_cli, write_fast
from test_mount_snapshots import tree_digest

pytestmark = needs_fuse


@pytest.fixture(scope="module")
def s3_server():
    pytest.importorskip("boto3")
    with servers.s3_server() as url:
        yield url


@pytest.fixture
def aws(s3_server, monkeypatch, tmp_path):
    """Credentials and endpoint as AWS tools take them, and a fresh bucket."""
    import boto3

    for key, value in {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
                       "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": s3_server}.items():
        monkeypatch.setenv(key, value)
    bucket = f"b{tmp_path.name.lower().replace('_', '-')[-40:]}"
    boto3.client("s3").create_bucket(Bucket=bucket)
    return bucket


def another_store(tmp_path: Path, name: str, bucket: str | None = None, prefix: str = "") -> Workspace:
    """A second store (another machine's), with the remote `team` added when a bucket is given."""
    other = Workspace(tmp_path / name, tmp_path / name / "store")
    other.root.mkdir()
    other.cli("init")
    if bucket is not None:
        other.cli("remote", "add", "team", f"s3://{bucket}/{prefix}")
    return other


def cowfs_json(store: Path, *args: str) -> dict | list:
    return json.loads(run_cli(*args, "--json", store=store).stdout)


def test_push_then_pull_into_another_store_gives_the_same_tree(workspace, aws, tmp_path):
    mnt = workspace.mount()
    (mnt / "data").mkdir()
    (mnt / "data" / "big.bin").write_bytes(os.urandom(4 << 20))
    (mnt / "notes.txt").write_text("before the SVM\n")
    os.symlink("data/big.bin", mnt / "latest")
    os.link(mnt / "notes.txt", mnt / "notes-link.txt")
    Path(mnt, os.fsdecode(b"caf\xe9.csv")).write_bytes(b"a,b\n1,2\n")
    os.utime(mnt / "notes.txt", ns=(1_000_000_000, 1_500_000_000))
    first = workspace.snap(mnt, "before training", wait=True)
    expected = tree_digest(mnt)

    workspace.cli("remote", "add", "team", f"s3://{aws}/shared/work")
    sent = cowfs_json(workspace.store, "push", "team")
    assert sent["pushed"] == [first["id"]] and sent["bytes_uploaded"] >= 4 << 20
    listed = cowfs_json(workspace.store, "log", "--remote", "team")
    assert [s["label"] for s in listed] == ["before training"]
    again = cowfs_json(workspace.store, "push", "team")
    assert again["pushed"] == [] and again["bytes_uploaded"] == 0, "nothing is sent twice"
    cached = sorted(p.name for p in (workspace.store / "remote-cache" / "team" / "index").iterdir())
    assert cached and all(name.endswith(".json") for name in cached), "index objects are fetched once"

    other = another_store(tmp_path, "other", aws, "shared/work")
    branch_mount = workspace.mount(first["id"], name="branch", branch="experiment")
    (branch_mount / "only-here.txt").write_text("on a branch")
    on_branch = workspace.snap(branch_mount, "on the branch", wait=True)
    from_inside = json.loads(workspace.cli("push", "team", "--json", cwd=branch_mount).stdout)
    assert from_inside["pushed"] == [on_branch["id"]], "push from inside a mount sends that mount's branch"
    try:
        pulled = cowfs_json(other.store, "pull", "team", "before training")
        assert pulled["files"] == 3 and pulled["bytes_downloaded"] >= 4 << 20
        back = other.mount(pulled["local_snapshot"], name="from-alice")
        assert tree_digest(back) == expected
        assert (back / "notes.txt").stat().st_mtime_ns == 1_500_000_000
        assert (back / "notes.txt").stat().st_ino == (back / "notes-link.txt").stat().st_ino
        log = cowfs_json(other.store, "log")
        assert log[0]["label"] == "before training" and log[0]["meta"]["remote_id"] == listed[0]["id"]

        # A 1 MiB change: about 1 MiB goes up, and about 1 MiB comes down into the store that has the rest.
        with open(mnt / "data" / "big.bin", "r+b") as handle:
            handle.seek(1 << 20)
            handle.write(os.urandom(1 << 20))
        workspace.snap(mnt, "after training", wait=True)
        delta = cowfs_json(workspace.store, "push", "team")
        assert (1 << 20) <= delta["bytes_uploaded"] < (1 << 20) + (256 << 10), delta
        second = cowfs_json(other.store, "pull", "team", "after training")
        assert (1 << 20) <= second["bytes_downloaded"] < (1 << 20) + (512 << 10), second
        newer = other.mount(second["local_snapshot"], name="after")
        assert tree_digest(newer) == tree_digest(mnt)
        assert other.cli("fsck").returncode == 0
    finally:
        other.unmount_all()


def test_a_push_right_after_a_fast_write_sends_it_compressed(workspace, aws, tmp_path):
    """A large write is stored raw until the mount is idle; a push in between still sends the
    compressed chunks, and they come back as the same bytes."""
    import threading

    mnt = workspace.mount()
    text = b"".join(b"%d,%d,%d\n" % (i, (i * 7919) % 1000003, i % 13) for i in range(3_000_000))
    done = threading.Event()

    def keep_the_mount_busy() -> None:  # FUSE requests hold the idle compression back (30 s at most)
        while not done.wait(0.1):
            os.stat(mnt / "features.csv")

    write_fast(mnt / "features.csv", text)
    busy = threading.Thread(target=keep_the_mount_busy)
    busy.start()
    try:
        workspace.snap(mnt, "features", wait=True)
        workspace.cli("remote", "add", "team", f"s3://{aws}/work")
        sent = cowfs_json(workspace.store, "push", "team")
        pending = cowfs_json(workspace.store, "status")["uncompressed_packs"]
    finally:
        done.set()
        busy.join()
    assert pending >= 1, "the write was compressed before the push: nothing was checked"
    assert sent["bytes_uploaded"] < len(text) / 2, sent
    other = another_store(tmp_path, "other", aws, "work")
    try:
        pulled = cowfs_json(other.store, "pull", "team", "features")
        back = other.mount(pulled["local_snapshot"], name="back")
        assert (back / "features.csv").read_bytes() == text
    finally:
        other.unmount_all()


def test_remote_mistakes_are_one_line(workspace, aws, monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s3cr3t-never-shown")  # moto takes any key
    for args, fragment in [(["push", "nowhere"], "no remote named 'nowhere'"),
                           (["remote", "add", "x", "http://bucket"], "not an s3://bucket/prefix address")]:
        result = workspace.cli(*args, check=False)
        assert result.returncode != 0 and fragment in result.stderr and "Traceback" not in result.stderr
    workspace.cli("remote", "add", "team", f"s3://{aws}/p")
    result = workspace.cli("pull", "team", "no-such-snapshot", check=False)
    assert result.returncode != 0 and "no snapshot 'no-such-snapshot' on the remote" in result.stderr
    target = str(workspace.root / "from-remote")
    for args, fragment in [(["mount", "team:nope", target], "no snapshot 'nope' on the remote"),
                           (["mount", "--cache-size", "1M", "team:x", target], "give at least 16M"),
                           (["mount", "--cache-size", "lots", "team:x", target], "'lots' is not a size")]:
        result = workspace.cli(*args, check=False)
        assert result.returncode != 0 and fragment in result.stderr and "Traceback" not in result.stderr, result.stderr
    assert not os.path.exists(target), "a refused lazy mount leaves nothing behind"
    workspace.cli("remote", "add", "gone", "s3://no-such-bucket-here/p")
    result = workspace.cli("log", "--remote", "gone", check=False)
    assert result.returncode != 0 and "NoSuchBucket" in result.stderr and "Traceback" not in result.stderr
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    result = workspace.cli("log", "--remote", "team", check=False)
    assert result.returncode != 0 and "cannot reach" in result.stderr and "Traceback" not in result.stderr
    assert "s3cr3t" not in result.stdout + result.stderr
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name)
    for name in ("AWS_SHARED_CREDENTIALS_FILE", "AWS_CONFIG_FILE"):
        monkeypatch.setenv(name, str(workspace.root / "no-such-file"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    result = workspace.cli("push", "team", check=False)
    assert result.returncode != 0 and "no AWS credentials" in result.stderr and "Traceback" not in result.stderr
    stored = b"".join(p.read_bytes() for p in workspace.store.rglob("*") if p.is_file())
    assert b"s3cr3t" not in stored and b"AWS_SECRET" not in stored, "credentials never reach the store"


def test_forget_and_gc_reclaim_only_what_no_snapshot_needs(workspace, aws, tmp_path):
    import boto3

    mnt = workspace.mount()
    workspace.cli("remote", "add", "team", f"s3://{aws}/p")
    (mnt / "model.bin").write_bytes(os.urandom(2 << 20))
    (mnt / "keep.txt").write_text("shared by both")
    old = workspace.snap(mnt, "old model", wait=True)
    cowfs_json(workspace.store, "push", "team")
    (mnt / "model.bin").write_bytes(os.urandom(2 << 20))
    workspace.snap(mnt, "new model", wait=True)
    expected = tree_digest(mnt)
    cowfs_json(workspace.store, "push", "team")

    s3 = boto3.client("s3")
    s3.put_object(Bucket=aws, Key="p/leases/push-elsewhere.json", Body=b"{}")  # another machine pushing
    refused = workspace.cli("remote", "gc", "team", "--grace", "0s", check=False)
    assert refused.returncode != 0 and "a push is running" in refused.stderr and "Traceback" not in refused.stderr
    s3.delete_object(Bucket=aws, Key="p/leases/push-elsewhere.json")

    listed = cowfs_json(workspace.store, "log", "--remote", "team")
    old_id = next(s["id"] for s in listed if s["label"] == "old model")
    workspace.cli("remote", "forget", "team", old_id)
    young = cowfs_json(workspace.store, "remote", "gc", "team", "--grace", "1h")
    assert young["packs_deleted"] == 0 and young["packs_kept_young"] == 1, "a push's packs may still be landing"
    reclaimed = cowfs_json(workspace.store, "remote", "gc", "team", "--grace", "0s")
    # The old pack also held keep.txt, which the new snapshot still needs: it moves to a new pack.
    assert reclaimed["packs_deleted"] == 1 and reclaimed["packs_rewritten"] == 1, reclaimed
    assert reclaimed["bytes_freed"] >= 2 << 20, reclaimed

    fresh = another_store(tmp_path, "fresh", aws, "p")
    try:
        pulled = cowfs_json(fresh.store, "pull", "team", "new model")
        assert tree_digest(fresh.mount(pulled["local_snapshot"], name="m")) == expected
        gone = fresh.cli("pull", "team", old["id"], check=False)
        assert gone.returncode != 0 and "no snapshot" in gone.stderr
    finally:
        fresh.unmount_all()
    s3.put_object(Bucket=aws, Key="p/leases/gc-elsewhere.json", Body=b"{}")
    blocked = workspace.cli("push", "team", check=False)
    assert blocked.returncode != 0 and "a gc is running" in blocked.stderr


def test_two_stores_pushing_at_once_lose_nothing(aws, tmp_path):
    stores = [another_store(tmp_path, name, aws, "shared") for name in ("alice", "bob")]
    try:
        expected = {}
        for ws in stores:
            mnt = ws.mount()
            (mnt / "common.bin").write_bytes(b"same bytes in both stores\n" * 50000)
            (mnt / "own.bin").write_bytes(os.urandom(3 << 20))
            ws.snap(mnt, f"from {ws.root.name}", wait=True)
            expected[ws.root.name] = tree_digest(mnt)
        env = {**os.environ}
        pushes = [subprocess.Popen([sys.executable, "-m", "cowfs.cli.main", "push", "team", "--json"],
                                   env=env | {"COWFS_STORE": str(ws.store)}, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True) for ws in stores]
        for process in pushes:
            out, err = process.communicate(timeout=120)
            assert process.returncode == 0, err
        listed = cowfs_json(stores[0].store, "log", "--remote", "team")
        assert sorted(s["label"] for s in listed) == ["from alice", "from bob"]
        for ws in stores:
            other = next(o for o in stores if o is not ws)
            pulled = cowfs_json(ws.store, "pull", "team", f"from {other.root.name}")
            assert tree_digest(ws.mount(pulled["local_snapshot"], name="pulled")) == expected[other.root.name]
    finally:
        for ws in stores:
            ws.unmount_all()


def test_a_corrupted_object_on_the_remote_is_reported_and_never_served(workspace, aws, tmp_path):
    """A pack altered on the remote: the pull fails in one line naming the damage, adds no
    snapshot, and the store it ran in stays consistent."""
    import boto3

    mnt = workspace.mount()
    (mnt / "model.bin").write_bytes(os.urandom(3 << 20))
    workspace.snap(mnt, "model", wait=True)
    workspace.cli("remote", "add", "team", f"s3://{aws}/p")
    cowfs_json(workspace.store, "push", "team")

    s3 = boto3.client("s3")
    packs = [o["Key"] for o in s3.list_objects_v2(Bucket=aws, Prefix="p/packs/")["Contents"]]
    assert len(packs) == 1
    body = bytearray(s3.get_object(Bucket=aws, Key=packs[0])["Body"].read())
    body[len(body) // 2] ^= 0xFF  # one bit of one data chunk, in place: sizes and names still match
    s3.put_object(Bucket=aws, Key=packs[0], Body=bytes(body))

    other = another_store(tmp_path, "other", aws, "p")
    result = other.cli("pull", "team", "model", check=False)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "remote pack" in result.stderr and "fails its hash check" in result.stderr, result.stderr
    assert "the remote's copy is damaged; no snapshot was added" in result.stderr
    assert cowfs_json(other.store, "log") == [], "no snapshot appears from a damaged pull"
    assert other.cli("fsck").returncode == 0
    again = other.cli("pull", "team", "model", check=False)
    assert again.returncode == 1 and "fails its hash check" in again.stderr, "the damage is found every time"


def test_a_push_cut_off_midway_resumes_without_sending_again_what_arrived(workspace, aws, s3_server, monkeypatch):
    """The server goes away in the middle of a push (a proxy in front of it drops every
    connection after 24 MiB): the push fails in one line, the remote shows no snapshot (the
    record is the commit point), and the next push sends only what had not arrived."""
    import boto3

    mnt = workspace.mount()
    for number in range(3):
        (mnt / f"part-{number}.bin").write_bytes(os.urandom(15 << 20))
    workspace.snap(mnt, "three parts", wait=True)
    proxy = servers.CuttingProxy(int(s3_server.rsplit(":", 1)[1]))
    try:
        monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
        workspace.cli("remote", "add", "team", f"s3://{aws}/p", "--endpoint-url", proxy.url)
        proxy.cut_after(24 << 20)
        cut = workspace.cli("push", "team", check=False)
        assert cut.returncode == 1 and "Traceback" not in cut.stderr and len(cut.stderr.strip().splitlines()) == 1
        assert "remote team" in cut.stderr, cut.stderr
        direct = boto3.client("s3")  # straight to the server, past the proxy
        arrived = [o["Key"] for o in direct.list_objects_v2(Bucket=aws, Prefix="p/").get("Contents", [])]
        assert any(k.startswith("p/packs/") for k in arrived) and not any(k.startswith("p/snapshots/") for k in arrived)

        proxy.restore()
        resumed = cowfs_json(workspace.store, "push", "team")
        assert len(resumed["pushed"]) == 1
        total = 45 << 20
        assert resumed["bytes_uploaded"] < total - (12 << 20), "packs that arrived are not sent again"
        other = another_store(workspace.root, "other")
        other.cli("remote", "add", "team", f"s3://{aws}/p", "--endpoint-url", proxy.url)
        proxy.cut_after(20 << 20)  # the same in the other direction: a pull cut off midway
        cut = other.cli("pull", "team", "three parts", check=False)
        assert cut.returncode == 1 and "Traceback" not in cut.stderr and "remote team" in cut.stderr
        assert cowfs_json(other.store, "log") == [] and other.cli("fsck").returncode == 0, \
            "a cut pull adds no snapshot and leaves the store consistent"
        proxy.restore()
        pulled = cowfs_json(other.store, "pull", "team", "three parts")
        back = other.mount(pulled["local_snapshot"], name="back")
        assert tree_digest(back) == tree_digest(mnt)
    finally:
        proxy.close()


def cache_bytes(store: Path) -> int:
    return sum(p.stat().st_size for p in (store / "remote-cache").rglob("*") if p.is_file() and "chunks" in p.parts)


def test_a_lazy_mount_fetches_only_what_is_read_and_fails_cleanly_when_the_remote_is_gone(
        workspace, aws, s3_server, tmp_path, monkeypatch):
    """`cowfs mount team:SNAP DIR` on another store: the mount downloads no file data, reading a
    file fetches its chunks (byte for byte), data read once is served when the remote is gone,
    a read the remote cannot serve is EIO with a logged reason (then works when it is back),
    and writes on the branch (into blocks never fetched) leave the snapshot as it was."""
    import hashlib

    mnt = workspace.mount()
    (mnt / "data").mkdir()
    (mnt / "data" / "big.bin").write_bytes(os.urandom(24 << 20))
    (mnt / "data" / "unread.bin").write_bytes(os.urandom(3 << 20))
    (mnt / "notes.txt").write_text("before the SVM\n" * 1000)
    workspace.snap(mnt, "shared", wait=True)
    expected = tree_digest(mnt)
    workspace.cli("remote", "add", "team", f"s3://{aws}/p")
    cowfs_json(workspace.store, "push", "team")

    proxy = servers.CuttingProxy(int(s3_server.rsplit(":", 1)[1]))
    other = another_store(tmp_path, "other")
    try:
        monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
        other.cli("remote", "add", "team", f"s3://{aws}/p", "--endpoint-url", proxy.url)
        lazy = other.mount("team:shared", name="from-alice")
        assert cache_bytes(other.store) == 0, "mounting fetched no file data"
        assert sorted(p.name for p in (lazy / "data").iterdir()) == ["big.bin", "unread.bin"]
        assert (lazy / "data" / "big.bin").stat().st_size == 24 << 20

        assert (lazy / "notes.txt").read_text() == "before the SVM\n" * 1000
        assert 0 < cache_bytes(other.store) < 64 << 10, "reading a small file fetched only its chunk"
        wanted = hashlib.sha256((mnt / "data" / "big.bin").read_bytes()).hexdigest()
        assert hashlib.sha256((lazy / "data" / "big.bin").read_bytes()).hexdigest() == wanted
        assert cache_bytes(other.store) < 28 << 20, "unread.bin was not fetched"

        proxy.cut_after(0)  # the remote is gone
        drop_caches()
        assert hashlib.sha256((lazy / "data" / "big.bin").read_bytes()).hexdigest() == wanted, \
            "data read once is served from the local cache"
        with pytest.raises(OSError) as failed:
            (lazy / "data" / "unread.bin").read_bytes()
        assert failed.value.errno == errno.EIO
        log = (other.store / "logs").glob("*.log")
        assert any("could not be fetched from remote team" in p.read_text() for p in log)
        assert other.cli("fsck").returncode == 0, "an interrupted lazy read leaves the store consistent"

        proxy.restore()
        with open(lazy / "data" / "unread.bin", "r+b") as handle:  # a write into a block never fetched
            handle.seek(200_000)
            handle.write(b"changed here")
        drop_caches()
        changed = (lazy / "data" / "unread.bin").read_bytes()
        original = (mnt / "data" / "unread.bin").read_bytes()
        assert changed == original[:200_000] + b"changed here" + original[200_012:]
        pristine = other.mount("team:shared", name="again")
        assert tree_digest(pristine) == expected, "the lazily pulled snapshot never changes"
        pristine_id = next(s["id"] for s in cowfs_json(other.store, "log") if s["meta"].get("lazy"))
        assert other.cli("fsck").returncode == 0

        # The branch's own snapshot goes back to the remote it came from with only the change,
        # and to another remote whole (the chunks never read are fetched on the way).
        other.snap(lazy, "changed on the lazy branch", wait=True)
        back = json.loads(other.cli("push", "team", "--json", cwd=lazy).stdout)
        assert len(back["pushed"]) == 1 and back["bytes_uploaded"] < 256 << 10, back
        other.cli("remote", "add", "elsewhere", f"s3://{aws}/elsewhere", "--endpoint-url", proxy.url)
        moved = json.loads(other.cli("push", "elsewhere", "--json", cwd=lazy).stdout)
        assert moved["bytes_uploaded"] > 27 << 20, moved
        third = another_store(tmp_path, "third", aws, "elsewhere")
        copied = cowfs_json(third.store, "pull", "team", "changed on the lazy branch")
        assert tree_digest(third.mount(copied["local_snapshot"], name="copy")) == tree_digest(lazy)
        third.unmount_all()

        # A full pull of the lazily pulled snapshot brings the rest into the store: it reads offline.
        whole = cowfs_json(other.store, "pull", "team", "shared")
        assert whole["chunks_fetched"] > 0 and whole["local_snapshot"] == pristine_id, whole
        proxy.cut_after(0)
        shutil.rmtree(other.store / "remote-cache" / "team" / "chunks")
        assert tree_digest(other.mount(pristine_id, name="offline")) == expected
    finally:
        other.unmount_all()
        proxy.close()


def test_a_lazy_mount_keeps_its_cache_under_the_limit_and_never_serves_a_damaged_chunk(
        workspace, aws, tmp_path):
    import boto3
    import hashlib

    mnt = workspace.mount()
    (mnt / "large.bin").write_bytes(os.urandom(40 << 20))
    workspace.snap(mnt, "large", wait=True)
    workspace.cli("remote", "add", "team", f"s3://{aws}/p")
    cowfs_json(workspace.store, "push", "team")

    other = another_store(tmp_path, "other", aws, "p")
    try:
        lazy = other.mount("team:large", name="lazy", options=("--cache-size", "16M"))
        wanted = hashlib.sha256((mnt / "large.bin").read_bytes()).hexdigest()
        assert hashlib.sha256((lazy / "large.bin").read_bytes()).hexdigest() == wanted
        assert 0 < cache_bytes(other.store) <= 16 << 20, "the cache never passes its limit"
        other.umount(lazy)

        s3 = boto3.client("s3")  # one bit of one chunk, in place on the remote
        pack = next(o["Key"] for o in s3.list_objects_v2(Bucket=aws, Prefix="p/packs/")["Contents"])
        body = bytearray(s3.get_object(Bucket=aws, Key=pack)["Body"].read())
        body[len(body) // 4 + 1000] ^= 0xFF  # inside a chunk, not between two
        s3.put_object(Bucket=aws, Key=pack, Body=bytes(body))
        shutil.rmtree(other.store / "remote-cache" / "team" / "chunks")
        lazy = other.mount("team:large", name="lazy2")
        with pytest.raises(OSError) as failed:
            (lazy / "large.bin").read_bytes()
        assert failed.value.errno == errno.EIO, "a damaged chunk is an I/O error, never wrong bytes"
        log = "".join(p.read_text() for p in (other.store / "logs").glob("*.log"))
        assert "fails its hash check" in log and "remote team" in log
    finally:
        other.unmount_all()


def test_a_read_waiting_for_a_hung_remote_holds_up_no_one_else(workspace, aws, s3_server, tmp_path):
    """While one program's read of a lazily mounted file waits for a remote that stopped
    answering, other programs still list, create, read and stat files on the same mount; the
    read completes, byte for byte, once the remote answers again."""
    import threading

    mnt = workspace.mount()
    payload = os.urandom(2 << 20)
    (mnt / "waits.bin").write_bytes(payload)
    (mnt / "local.txt").write_text("here already")
    workspace.snap(mnt, "shared", wait=True)
    workspace.cli("remote", "add", "team", f"s3://{aws}/p")
    cowfs_json(workspace.store, "push", "team")

    proxy = servers.CuttingProxy(int(s3_server.rsplit(":", 1)[1]))
    other = another_store(tmp_path, "other")
    try:
        other.cli("remote", "add", "team", f"s3://{aws}/p", "--endpoint-url", proxy.url)
        lazy = other.mount("team:shared", name="lazy")
        assert (lazy / "local.txt").read_text() == "here already"
        for _ in range(100):  # past pyfuse3's 99 workers: later requests wait their turn with us
            assert sorted(os.listdir(lazy)) == ["local.txt", "waits.bin"]
        proxy.hold()
        watchdog = threading.Timer(30, proxy.release)  # if the others do wait, fail; never hang
        watchdog.start()
        got: dict[str, bytes] = {}
        reader = threading.Thread(target=lambda: got.setdefault("data", (lazy / "waits.bin").read_bytes()))
        reader.start()
        try:
            assert proxy.stalled.wait(30), "the read never reached the remote"
            (lazy / "new").mkdir()
            for i in range(50):
                (lazy / "new" / f"{i}.txt").write_text(str(i))
            assert sorted(os.listdir(lazy / "new")) == sorted(f"{i}.txt" for i in range(50))
            assert (lazy / "local.txt").read_text() == "here already"
            assert (lazy / "waits.bin").stat().st_size == len(payload)
            assert reader.is_alive() and "data" not in got, "the read did not wait for the remote"
        finally:
            watchdog.cancel()
            proxy.release()
            reader.join(timeout=120)
        assert got.get("data") == payload
    finally:
        other.unmount_all()
        proxy.close()
