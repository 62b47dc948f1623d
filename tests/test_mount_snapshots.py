"""Snapshots and branches through real mounts: atomic, immutable, nested, persistent."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path


import pytest

from conftest import drop_caches, needs_fuse

pytestmark = needs_fuse


def tree_digest(root: Path) -> dict[str, str]:
    """Path -> content hash (or link target / 'dir'), for byte-for-byte comparisons."""
    result = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        if path.is_symlink():
            result[rel] = "link:" + os.readlink(path)
        elif path.is_dir():
            result[rel] = "dir"
        else:
            result[rel] = hashlib.blake2b(path.read_bytes()).hexdigest()
    return result


def test_snapshot_holds_writes_before_and_nothing_after(workspace):
    mnt = workspace.mount()
    before = os.urandom(5 << 20)
    with open(mnt / "f", "wb") as handle:  # stays open: no close() flushes the kernel's pages
        handle.write(before)
        handle.flush()
        snap = workspace.snap(mnt, "mid")
        handle.seek(0)
        handle.write(b"after" * 1000)
    (mnt / "later").write_text("not in the snapshot")
    back = workspace.mount(snap["id"], name="back")
    assert (back / "f").read_bytes() == before
    assert not (back / "later").exists()


def test_snapshot_mount_is_a_branch_and_the_snapshot_never_changes(workspace):
    mnt = workspace.mount()
    (mnt / "data").mkdir()
    (mnt / "data" / "x.csv").write_text("a,b\n1,2\n")
    expected = tree_digest(mnt)
    snap = workspace.snap(mnt, "base")
    (mnt / "data" / "x.csv").write_text("changed on main\n")
    branch = workspace.mount(snap["id"], name="b1")
    assert tree_digest(branch) == expected
    (branch / "data" / "x.csv").write_text("changed on the branch\n")
    (branch / "new").write_text("new")
    workspace.umount(branch)
    again = workspace.mount(snap["id"], name="b2")
    assert tree_digest(again) == expected
    assert (mnt / "data" / "x.csv").read_text() == "changed on main\n"


def test_branches_of_branches_to_depth(workspace):
    mnt = workspace.mount()
    (mnt / "level").write_text("0")
    current = mnt
    for depth in range(1, 4):
        snap = workspace.snap(current, f"d{depth}")
        current = workspace.mount(snap["id"], name=f"depth{depth}")
        assert (current / "level").read_text() == str(depth - 1)
        (current / "level").write_text(str(depth))
    assert (mnt / "level").read_text() == "0"


def test_unmount_and_mount_again_keeps_tree_and_snapshots(workspace):
    mnt = workspace.mount()
    (mnt / "d").mkdir()
    (mnt / "d" / "big").write_bytes(os.urandom(2 << 20))
    workspace.snap(mnt, "one")
    (mnt / "d" / "small").write_text("s")
    expected = tree_digest(mnt)
    workspace.umount(mnt)
    mnt = workspace.mount()
    assert tree_digest(mnt) == expected
    labels = [s["label"] for s in json.loads(workspace.cli("log", "--json").stdout)]
    assert labels == ["one"]


def test_kill_9_loses_nothing_that_was_fsynced(workspace):
    mnt = workspace.mount()
    payload = os.urandom(1 << 20)
    with open(mnt / "synced", "wb") as handle:
        handle.write(payload)
        handle.flush()
        os.fsync(handle.fileno())
    snap = workspace.snap(mnt, "durable", wait=True)
    assert snap["durable"] is True
    os.kill(workspace.daemon_pid(mnt), signal.SIGKILL)
    time.sleep(0.2)
    result = workspace.cli("mount", str(mnt))  # clears the stale mount, starts a new daemon
    assert "stale" in result.stderr
    assert (mnt / "synced").read_bytes() == payload
    back = workspace.mount(snap["id"], name="back")
    assert (back / "synced").read_bytes() == payload


def test_sigterm_flushes_and_unmounts(workspace):
    mnt = workspace.mount()
    (mnt / "f").write_bytes(b"z" * 100000)
    pid = workspace.daemon_pid(mnt)
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and os.path.ismount(mnt):
        time.sleep(0.05)
    assert not os.path.ismount(mnt)
    workspace.mounts.remove(mnt)
    mnt = workspace.mount()
    assert (mnt / "f").read_bytes() == b"z" * 100000


def test_sigusr1_takes_a_snapshot(workspace):
    mnt = workspace.mount()
    (mnt / "f").write_text("x")
    os.kill(workspace.daemon_pid(mnt), signal.SIGUSR1)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if json.loads(workspace.cli("log", "--json").stdout):
            break
        time.sleep(0.05)
    record = json.loads(workspace.cli("log", "--json").stdout)[0]
    # The first snapshot of a daemon cannot name its changes (an earlier daemon may have made some).
    assert record["meta"] == {"trigger": "SIGUSR1", "changed_paths": None}
    (mnt / "g").write_text("y")
    os.kill(workspace.daemon_pid(mnt), signal.SIGUSR1)
    while len(json.loads(workspace.cli("log", "--json").stdout)) < 2 and time.monotonic() < deadline + 10:
        time.sleep(0.05)
    assert json.loads(workspace.cli("log", "--json").stdout)[0]["meta"] == {"trigger": "SIGUSR1",
                                                                            "changed_paths": ["g"]}


def test_same_data_in_two_files_and_two_branches_is_stored_once(workspace):
    mnt = workspace.mount()
    payload = os.urandom(4 << 20)
    (mnt / "a").write_bytes(payload)
    snap = workspace.snap(mnt, "one", wait=True)
    unique = json.loads(workspace.cli("status", "--json").stdout)["chunk_raw_bytes"]
    (mnt / "b").write_bytes(payload)
    branch = workspace.mount(snap["id"], name="b")
    (branch / "c").write_bytes(payload)
    workspace.snap(mnt, wait=True)
    workspace.snap(branch, wait=True)
    status = json.loads(workspace.cli("status", "--json").stdout)
    assert status["chunk_raw_bytes"] == unique
    assert status["logical_bytes"] >= 3 * len(payload)


def test_small_change_to_big_workspace_adds_about_the_change(workspace):
    mnt = workspace.mount()
    for i in range(8):
        (mnt / f"part{i}").write_bytes(os.urandom(8 << 20))
    workspace.snap(mnt, "base", wait=True)
    with open(mnt / "part3", "r+b") as handle:
        handle.seek(5 << 20)
        handle.write(os.urandom(1 << 20))
    after = workspace.snap(mnt, "after", wait=True)
    assert (1 << 20) <= after["bytes_added"] <= (1 << 20) + (256 << 10)


def test_diff_lists_added_removed_modified(workspace):
    mnt = workspace.mount()
    (mnt / "keep").write_text("same")
    (mnt / "change").write_text("v1")
    (mnt / "remove").write_text("bye")
    workspace.snap(mnt, "a")
    (mnt / "change").write_text("v2!")
    (mnt / "remove").unlink()
    (mnt / "add").write_text("hello")
    workspace.snap(mnt, "b")
    changes = {c["path"]: c["kind"] for c in json.loads(workspace.cli("diff", "a", "b", "--json").stdout)}
    assert changes == {"add": "added", "change": "modified", "remove": "removed"}


def test_diff_patch_shows_small_text_files_line_by_line(workspace):
    mnt = workspace.mount()
    (mnt / "clean.py").write_text("rows = load()\nrows = rows.dropna()\nprint(len(rows))\n")
    (mnt / "model.bin").write_bytes(bytes(range(256)) * 10)
    (mnt / "big.csv").write_text("a,b\n" * 100_000)
    workspace.snap(mnt, "a")
    (mnt / "clean.py").write_text("rows = load()\nrows = rows.fillna(0)\nprint(len(rows))\n")
    (mnt / "model.bin").write_bytes(bytes(range(255, -1, -1)) * 10)
    (mnt / "big.csv").write_text("a,b\n" * 100_001)
    workspace.snap(mnt, "b")
    patches = {c["path"]: c["patch"] for c in json.loads(workspace.cli("diff", "a", "b", "--json", "--patch").stdout)}
    assert patches["clean.py"].splitlines()[2:] == ["@@ -1,3 +1,3 @@", " rows = load()", "-rows = rows.dropna()",
                                                    "+rows = rows.fillna(0)", " print(len(rows))"]
    assert patches["model.bin"] is None and patches["big.csv"] is None  # binary, and too big to read
    shown = workspace.cli("diff", "a", "b", "--patch").stdout
    assert "M clean.py" in shown and "+rows = rows.fillna(0)" in shown


def test_real_tools_through_the_mount(workspace, tmp_path):
    mnt = workspace.mount()
    source = Path(os.__file__).parent / "json"
    subprocess.run(["cp", "-a", str(source), str(mnt / "json")], check=True)
    subprocess.run(["tar", "cf", str(tmp_path / "j.tar"), "-C", str(source.parent), "json"], check=True)
    (mnt / "untar").mkdir()
    subprocess.run(["tar", "xf", str(tmp_path / "j.tar"), "-C", str(mnt / "untar")], check=True)
    git = ["git", "-c", "user.email=t@e", "-c", "user.name=t"]
    subprocess.run(git + ["init", "-q", str(mnt / "repo")], check=True)
    (mnt / "repo" / "README").write_text("hello\n")
    subprocess.run(git + ["-C", str(mnt / "repo"), "add", "-A"], check=True)
    subprocess.run(git + ["-C", str(mnt / "repo"), "commit", "-qm", "first"], check=True)
    subprocess.run(["sqlite3", str(mnt / "db.sqlite"),
                    "create table t(x); insert into t values (1),(2),(3);"], check=True)
    expected = tree_digest(mnt)
    snap = workspace.snap(mnt, "tools")
    subprocess.run(["sqlite3", str(mnt / "db.sqlite"), "insert into t values (4);"], check=True)
    drop_caches()
    assert tree_digest(mnt / "json") == tree_digest(source)
    assert tree_digest(mnt / "untar" / "json") == tree_digest(source)
    back = workspace.mount(snap["id"], name="back")
    assert tree_digest(back) == expected
    fsck = subprocess.run(["git", "-C", str(back / "repo"), "fsck"], capture_output=True, text=True)
    assert fsck.returncode == 0, fsck.stderr
    rows = subprocess.run(["sqlite3", str(back / "db.sqlite"), "select count(*) from t;"],
                          capture_output=True, text=True, check=True).stdout.strip()
    assert rows == "3"


def test_several_mounts_write_while_snap_gc_and_fsck_run(workspace):
    import threading

    main = workspace.mount()
    (main / "seed").write_text("seed")
    base = workspace.snap(main, "base", wait=True)
    branches = [main] + [workspace.mount(base["id"], name=f"b{i}") for i in range(2)]
    payloads = {m: {f"f{j}": os.urandom(50_000 + j) for j in range(30)} for m in branches}
    errors = []

    def write_all(mountpoint: Path) -> None:
        try:
            for name, data in payloads[mountpoint].items():
                (mountpoint / name).write_bytes(data)
                if name.endswith("5"):
                    workspace.snap(mountpoint)
        except Exception as exc:  # reported below; threads must not die silently
            errors.append(exc)

    threads = [threading.Thread(target=write_all, args=(m,)) for m in branches]
    for thread in threads:
        thread.start()
    workspace.cli("gc")
    assert workspace.cli("fsck", check=False).returncode == 0
    for thread in threads:
        thread.join()
    assert not errors
    drop_caches()
    for mountpoint, files in payloads.items():
        for name, data in files.items():
            assert (mountpoint / name).read_bytes() == data
    assert workspace.cli("fsck").returncode == 0


def test_umount_of_a_busy_mount_detaches_and_the_daemon_finishes_later(workspace):
    mnt = workspace.mount()
    (mnt / "kept").write_text("flushed")
    user = subprocess.Popen(["sleep", "30"], cwd=mnt)  # a shell sitting in the workspace
    try:
        pid = workspace.daemon_pid(mnt)
        result = workspace.cli("umount", str(mnt))
        workspace.mounts.remove(mnt)
        assert "busy" in result.stdout and not os.path.ismount(mnt)
        assert Path(f"/proc/{pid}").exists()
    finally:
        user.kill()
        user.wait()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and Path(f"/proc/{pid}/status").exists() and \
            "zombie" not in Path(f"/proc/{pid}/status").read_text():
        time.sleep(0.05)
    mnt = workspace.mount()
    assert (mnt / "kept").read_text() == "flushed"


def test_snapshots_are_an_atomic_cut_across_files(workspace):
    """A writer rewrites a then b in lockstep; every snapshot must see b == a or b == a - 1
    (or one file caught empty between its truncation and its write), never b ahead of a and
    never both empty: anything else would be a torn, non-atomic snapshot."""
    import threading

    mnt = workspace.mount()
    (mnt / "a").write_text("0")
    (mnt / "b").write_text("0")
    stop = threading.Event()

    def writer() -> None:
        version = 0
        while not stop.is_set():
            version += 1
            for name in ("a", "b"):
                with open(mnt / name, "w") as handle:
                    handle.write(str(version))

    thread = threading.Thread(target=writer)
    thread.start()
    from cowfs.cli.client import snapshot

    try:
        ids = []
        for _ in range(200):
            ids.append(snapshot(mnt)["id"])
            time.sleep(0.002)
    finally:
        stop.set()
        thread.join()
    store = workspace.open_store()
    try:
        from cowfs.fs.tree import Tree

        seen = set()
        for snap_id in ids:
            tree = Tree.at_snapshot(store, store.resolve_snapshot(snap_id))
            a, b = (tree.read(tree.resolve(n)[0], 0, 100) for n in (b"a", b"b"))
            assert a or b, f"snapshot {snap_id} caught both files empty"
            if a and b:
                assert int(b) in (int(a), int(a) - 1), f"snapshot {snap_id} is torn: a={a} b={b}"
                seen.add(int(a))
    finally:
        store.close()
    assert len(seen) > 5, "the writer must have made progress between snapshots"


def test_files_left_open_and_nameless_by_a_killed_daemon_are_swept(workspace):
    mnt = workspace.mount()
    (mnt / "scratch").write_bytes(b"temporary" * 1000)
    ino = os.stat(mnt / "scratch").st_ino
    holder = open(mnt / "scratch", "rb")
    os.unlink(mnt / "scratch")
    workspace.cli("snap", str(mnt))  # the unlink reaches the store
    os.kill(workspace.daemon_pid(mnt), signal.SIGKILL)
    try:
        holder.close()
    except OSError:
        pass  # the daemon is gone: the kernel cannot flush on close, and says so
    time.sleep(0.2)
    workspace.cli("mount", str(mnt))
    store = workspace.open_store()
    try:
        from cowfs.fs.tree import Tree

        with pytest.raises(OSError):
            Tree(store, 1).getattr(ino)
    finally:
        store.close()
    assert "deleted 1 files" in (workspace.store / "logs" / "main.log").read_text()


def test_cell_snapshots_appear_whole_and_snap_opens_whole_at_once(workspace):
    """A cell's (lazy) snapshot is answered before its record is written, and `cowfs log` run
    right after lists it (the command has the daemon list what it took); `cowfs snap` after a
    large write returns only once its snapshot can be opened whole; numbers go on without a gap
    after a restart."""
    from cowfs.cli.client import snapshot
    from cowfs.fs.tree import Tree

    mnt = workspace.mount()
    big = os.urandom(96 << 20)  # more than one flush batch: several are in flight at the snap
    (mnt / "big.bin").write_bytes(big)
    cell = snapshot(mnt, "cell", lazy=True)
    assert cell["durable"] is False
    store = workspace.open_store()  # at once, as a command opens it (the batch is still sealing)
    try:
        assert store.resolve_snapshot(cell["id"]).label == "cell"
    finally:
        store.close()
    listed = {entry["id"]: entry for entry in json.loads(workspace.cli("log", "--json").stdout)}
    assert listed[cell["id"]]["label"] == "cell"
    (mnt / "after-cell").write_text("x")
    by_hand = snapshot(mnt, "by hand")  # as `cowfs snap` asks, without --wait
    store = workspace.open_store()  # at once, as a `cowfs mount` of it would
    try:
        tree = Tree.at_snapshot(store, store.resolve_snapshot(by_hand["id"]))
        ino, attrs = tree.resolve(b"big.bin")
        assert attrs.size == len(big) and tree.read(ino, 0, len(big)) == big
        assert tree.read(tree.resolve(b"after-cell")[0], 0, 10) == b"x"
    finally:
        store.close()
    assert int(by_hand["id"].lstrip("@")) == int(cell["id"].lstrip("@")) + 1

    workspace.cli("umount", str(mnt))
    workspace.mounts.remove(mnt)
    mnt = workspace.mount()
    (mnt / "again").write_text("y")
    again = snapshot(mnt, "after a restart", lazy=True)
    assert int(again["id"].lstrip("@")) == int(by_hand["id"].lstrip("@")) + 1, "unused numbers came back"
    assert again["id"] in {entry["id"] for entry in json.loads(workspace.cli("log", "--json").stdout)}
