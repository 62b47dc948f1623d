"""Bad input: one clear line on stderr, a non-zero exit, nothing lost."""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from conftest import needs_fuse, run_cli

pytestmark = needs_fuse


def assert_fails(result, *fragments: str) -> None:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in result.stderr, result.stderr


def test_unknown_snapshot(workspace):
    mnt = workspace.mount()
    (mnt / "f").write_text("x")
    (workspace.root / "b").mkdir()
    assert_fails(workspace.cli("mount", "nosuch", str(workspace.root / "b"), check=False), "no snapshot 'nosuch'")
    assert_fails(workspace.cli("diff", "@99", "@98", check=False), "no snapshot '@99'")
    assert (mnt / "f").read_text() == "x"


def test_mount_point_problems(workspace):
    nowhere = workspace.root / "nowhere" / "missing"
    assert_fails(workspace.cli("mount", str(nowhere), check=False), "does not exist")
    assert not nowhere.parent.exists(), "only the last component is ever made"
    assert_fails(workspace.cli("mount", "@404", str(workspace.root / "new"), check=False), "@404")
    assert not (workspace.root / "new").exists(), "a refused mount leaves no directory behind"
    full = workspace.root / "full"
    full.mkdir()
    (full / "file").write_text("mine")
    assert_fails(workspace.cli("mount", str(full), check=False), "not empty")
    assert (full / "file").read_text() == "mine"
    mnt = workspace.mount()
    assert_fails(workspace.cli("mount", str(mnt), check=False), "already mounted")
    other = workspace.root / "other"
    other.mkdir()
    assert_fails(workspace.cli("mount", str(other), check=False), "already mounted")


def test_store_missing_or_not_a_store(tmp_path):
    assert_fails(run_cli("log", store=tmp_path / "nothing", check=False), "no cowfs store", "cowfs init")
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "precious").write_text("keep")
    assert_fails(run_cli("init", store=junk, check=False), "not empty")
    assert_fails(run_cli("log", store=junk, check=False), "not a cowfs store")
    assert (junk / "precious").read_text() == "keep"


def test_snap_outside_a_mount_and_without_a_daemon(workspace, tmp_path):
    assert_fails(workspace.cli("snap", str(tmp_path), check=False), "not inside a cowfs mount")
    assert_fails(workspace.cli("umount", str(tmp_path), check=False), "not a cowfs mount point")


def test_snap_works_from_a_subdirectory(workspace):
    mnt = workspace.mount()
    (mnt / "deep" / "er").mkdir(parents=True)
    result = workspace.cli("snap", "-m", "from inside", cwd=mnt / "deep" / "er")
    assert result.stdout.strip().startswith("@")


def test_store_and_socket_are_private(workspace):
    mnt = workspace.mount()
    assert os.stat(workspace.store).st_mode & 0o777 == 0o700
    # Every directory is the owner's alone yet enterable by the owner (root enters anything,
    # so only the modes can show that a plain user could use the store at all).
    for directory in (p for p in workspace.store.rglob("*") if p.is_dir()):
        assert os.stat(directory).st_mode & 0o777 == 0o700, directory
    for path in (p for p in (workspace.store / "index.lmdb").iterdir()):
        assert os.stat(path).st_mode & 0o077 == 0, path
    from cowfs.daemon.addresses import control_socket_path

    sock = control_socket_path(mnt)
    assert os.stat(sock).st_mode & 0o777 == 0o600
    assert os.stat(sock.parent).st_mode & 0o777 == 0o700


def test_a_runtime_directory_another_user_made_first_is_passed_over():
    """Issue 14, hole 1: another user who creates /tmp/cowfs-UID (0777) before the victim once
    stopped the victim from ever mounting. Reproduced in a mount namespace of its own, with a
    fresh /tmp, so the attack does not touch this machine's real runtime directory."""
    from conftest import _reap_daemons

    root = Path(tempfile.mkdtemp(prefix="cowfs-runtime-", dir="/var/tmp"))
    store, mnt = root / "store", root / "mnt"
    mnt.mkdir()
    cowfs = f"{sys.executable} -m cowfs.cli.main --store {store}"
    # A checkout under /tmp (CI may clone there) would vanish under the fresh /tmp: keep it seen.
    checkout = Path(__file__).resolve().parent.parent
    keep = ""
    if checkout.is_relative_to("/tmp"):
        keep = f"mkdir -p {checkout} && mount --bind {root}/real-tmp/{checkout.relative_to('/tmp')} {checkout}"
    script = f"""
set -e
mount --make-rprivate /
mkdir {root}/real-tmp && mount --bind /tmp {root}/real-tmp
mount -t tmpfs tmpfs /tmp
{keep}
mkdir /tmp/cowfs-0 && chown 65534:65534 /tmp/cowfs-0 && chmod 0777 /tmp/cowfs-0
unset XDG_RUNTIME_DIR
export XDG_CACHE_HOME={root}/cache
{cowfs} init
trap '{cowfs} umount {mnt} >/dev/null 2>&1 || true' EXIT
{cowfs} mount {mnt}
{cowfs} snap -m 'despite the squatter' {mnt}
{cowfs} status --json
ls {root}/cache/cowfs/run
"""
    try:
        result = subprocess.run(["unshare", "--mount", "sh", "-c", script], capture_output=True, text=True,
                                timeout=120)
        assert result.returncode == 0, result.stderr
        assert "@1" in result.stdout and str(mnt) in result.stdout and ".sock" in result.stdout
    finally:
        _reap_daemons(store)
        shutil.rmtree(root, ignore_errors=True)


def test_a_store_someone_else_could_change_is_never_used(tmp_path):
    """Issue 14, hole 2: root ran `cowfs --store ~user/st mount DIR` and truncated or appended
    to whatever files the user's planted symlinks named."""
    victims = {name: tmp_path / name for name in ("lock-victim", "log-victim")}
    for victim in victims.values():
        victim.write_text("root's own\n")
        victim.chmod(0o600)
    theirs = tmp_path / "theirs"
    run_cli("init", store=theirs)
    (theirs / "locks" / "branch-1").symlink_to(victims["lock-victim"])
    (theirs / "logs").mkdir(exist_ok=True)
    (theirs / "logs" / "main.log").symlink_to(victims["log-victim"])
    for path in [theirs, *theirs.rglob("*")]:
        os.lchown(path, 65534, 65534)
    target = tmp_path / "mnt"
    target.mkdir()
    try:
        assert_fails(run_cli("mount", str(target), store=theirs, check=False), "belongs to uid 65534")
        assert_fails(run_cli("log", store=theirs, check=False), "belongs to uid 65534")

        shared = tmp_path / "shared"
        shared.mkdir()
        shared.chmod(0o777)  # writable by all, not sticky
        assert_fails(run_cli("init", store=shared / "store", check=False), "is writable by others")

        mine = tmp_path / "mine"
        run_cli("init", store=mine)
        (mine / "logs" / "main.log").unlink(missing_ok=True)
        (mine / "logs" / "main.log").symlink_to(victims["log-victim"])
        result = run_cli("mount", str(target), store=mine, check=False)
        assert result.returncode != 0 and "symbolic link" in result.stderr and not os.path.ismount(target)
        assert all(v.read_text() == "root's own\n" for v in victims.values()), "no planted link was followed"
    finally:
        if os.path.ismount(target):  # only when the test fails: never leave a mount behind
            from conftest import force_unmount

            force_unmount(target)


def test_init_import_makes_the_first_snapshot(tmp_path):
    from test_mount_snapshots import tree_digest
    from conftest import Workspace

    source = tmp_path / "old-work"
    (source / "data").mkdir(parents=True)
    (source / "data" / "raw.csv").write_bytes(b"a,b\n" + b"1,2\n" * 50000)
    (source / "notes.txt").write_text("keep me")
    os.symlink("data/raw.csv", source / "latest.csv")
    os.link(source / "notes.txt", source / "notes-link.txt")
    os.setxattr(source / "notes.txt", "user.tag", b"v1")
    os.utime(source / "notes.txt", ns=(1_000_000_000, 1_500_000_000))
    ws = Workspace(tmp_path, tmp_path / "store")
    result = ws.cli("init", "--import", str(source))
    assert "imported 2 files" in result.stdout and "1 hard links" in result.stdout
    try:
        mnt = ws.mount()
        assert tree_digest(mnt) == tree_digest(source)
        assert (mnt / "notes.txt").stat().st_mtime_ns == 1_500_000_000
        assert (mnt / "notes.txt").stat().st_ino == (mnt / "notes-link.txt").stat().st_ino
        assert os.getxattr(mnt / "notes.txt", "user.tag") == b"v1"
        assert json.loads(ws.cli("log", "--json").stdout)[0]["label"] == f"import of {source}"
    finally:
        ws.unmount_all()
    assert_fails(run_cli("init", "--import", str(tmp_path / "missing"), store=tmp_path / "s2", check=False),
                 "not a directory")


def test_another_users_live_mount_is_never_taken_for_stale(monkeypatch):
    """Issue 14, hole 7: root's `cowfs umount` of another user's live mount could not reach
    that user's socket, called the mount stale and aborted its FUSE connection. Checked on a
    real mountinfo line of another user's cowfs mount (no second user can run this venv's
    Python on these machines, see issue 13), with fusectl and fusermount3 made to fail the
    test if they are reached."""
    from cowfs.cli import client, launcher
    from cowfs.cli.client import DaemonError
    from cowfs.daemon import addresses

    line = ("61 29 0:53 / /home/ann/work rw,nosuid,nodev,relatime shared:1 - fuse.cowfs cowfs "
            "rw,user_id=1000,group_id=1000,default_permissions\n")
    monkeypatch.setattr(addresses, "open", lambda *a, **k: io.StringIO(line), raising=False)
    entry = addresses.mounts()[0]
    assert (entry.mountpoint, entry.fstype, entry.owner) == ("/home/ann/work", "fuse.cowfs", 1000)
    monkeypatch.setattr(launcher, "mounts", lambda: [entry])
    monkeypatch.setattr(client, "mounts", lambda: [entry])
    monkeypatch.setattr(launcher, "abort_connection", lambda *_: pytest.fail("aborted a live mount"))
    monkeypatch.setattr(launcher.subprocess, "run", lambda *a, **k: pytest.fail("ran " + " ".join(a[0])))
    for attempt in (launcher.stop_daemon, launcher.detach_stale):
        with pytest.raises(DaemonError, match=r"another user \(uid 1000\).*it is not stale"):
            attempt(Path("/home/ann/work"))


def run_on_terminal(*args: str, store: Path) -> str:
    """Run a cowfs command with its stdout and stderr on a pseudo-terminal; return what it drew."""
    import pty

    controller, terminal = pty.openpty()
    env = {**os.environ, "COWFS_STORE": str(store)}
    process = subprocess.Popen([sys.executable, "-m", "cowfs.cli.main", *args], stdout=terminal,
                               stderr=terminal, stdin=subprocess.DEVNULL, env=env)
    os.close(terminal)
    drawn = b""
    while True:
        try:
            chunk = os.read(controller, 65536)
        except OSError:  # EIO: the command exited and closed the terminal
            break
        if not chunk:
            break
        drawn += chunk
    os.close(controller)
    assert process.wait(timeout=120) == 0, drawn
    return drawn.decode(errors="replace")


def test_long_work_shows_progress_on_a_terminal_only(tmp_path):
    """Issue 13: import, fsck and gc printed nothing until the end."""
    source = tmp_path / "big"
    for d in range(20):
        (source / f"d{d}").mkdir(parents=True)
        for f in range(50):
            (source / f"d{d}" / f"f{f}").write_bytes(os.urandom(2000))
    store = tmp_path / "store"
    drawn = run_on_terminal("init", "--import", str(source), store=store)
    assert "importing files:" in drawn and "imported 1000 files" in drawn
    assert "checking chunks:" in run_on_terminal("fsck", store=store)
    assert "collecting" in run_on_terminal("gc", store=store)
    quiet = run_cli("fsck", store=store)
    assert "checking" not in quiet.stdout + quiet.stderr, "no progress into pipes and files"
    assert "checking" not in run_on_terminal("fsck", "--json", store=store)


def test_damaged_stores_odd_names_and_interruptions_are_one_line(workspace, tmp_path):
    """Issue 13: no traceback ever reaches a user, and nothing is lost."""
    mnt = workspace.mount()
    odd = os.fsdecode(b"caf\xe9-\xff.csv")  # Latin-1 bytes: not UTF-8
    Path(mnt, odd).write_bytes(b"x" * 100)
    workspace.snap(mnt, "odd names")
    Path(mnt, odd).write_bytes(b"y" * 200)
    workspace.snap(mnt, "changed")
    for args in (["diff", "@1", "@2"], ["blame", str(Path(mnt, odd))], ["log", "--cells"], ["status"],
                 ["snap", "-m", odd, str(mnt)]):
        result = subprocess.run([sys.executable, "-m", "cowfs.cli.main", *args], capture_output=True,
                                env={**os.environ, "COWFS_STORE": str(workspace.store)})
        assert result.returncode == 0 and b"Traceback" not in result.stderr, (args, result.stderr)

    broken = tmp_path / "broken"
    shutil.copytree(workspace.store, broken, ignore=shutil.ignore_patterns("*.sock"))
    data = broken / "index.lmdb" / "data.mdb"
    with open(data, "r+b") as handle:
        handle.write(os.urandom(8192))  # both meta pages gone
    for args in (["log"], ["fsck"], ["mount", str(tmp_path / "m")], ["gc"]):
        result = run_cli(*args, store=broken, check=False)
        assert_fails(result, "not a usable cowfs store")
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    data.unlink()
    assert_fails(run_cli("log", store=broken, check=False), "not a cowfs store")

    source = tmp_path / "many"
    for d in range(40):
        (source / f"d{d}").mkdir(parents=True)
        for f in range(100):
            (source / f"d{d}" / f"f{f}").write_bytes(os.urandom(3000))
    process = subprocess.Popen([sys.executable, "-m", "cowfs.cli.main", "init", "--import", str(source)],
                               env={**os.environ, "COWFS_STORE": str(tmp_path / "interrupted")},
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert process.stdout.readline().startswith("created store")  # the import starts now
    time.sleep(0.1)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130 and "interrupted" in stderr and "Traceback" not in stderr, stderr
    assert "no damage" in run_cli("fsck", store=tmp_path / "interrupted").stdout
