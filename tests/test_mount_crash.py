"""Crashes at random points of a scripted workload: of the daemon (kill -9) and of the machine
(the store on tests/crashfs.py, which forgets whatever was not fsynced). After each, the store
mounts again at once, every fsync'ed file and every durable snapshot is intact, fsck is clean."""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import Workspace, _reap_daemons, drop_caches, needs_fuse, write_fast
from cowfs.cli.launcher import detach_stale
from cowfs.daemon.addresses import control_socket_path
from cowfs.fs.store import Store
from cowfs.fs.tree import Tree

pytestmark = needs_fuse
CRASHFS = Path(__file__).parent / "crashfs.py"

WRITER = r'''
import hashlib, json, os, random, socket, sys
mnt, log_path, seed, sock_path = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
rng = random.Random(seed)
written = []
with open(log_path, "a") as log:
    for i in range(100000):
        name = f"w{seed}_{i}"
        if i % 10 == 9:  # large and compressible, fsynced: stored raw, compressed by gc or the idle daemon
            data = b"".join(b"%d,%d\n" % (j, rng.randrange(10**6)) for j in range(rng.randrange(400000, 600000)))
        else:
            data = rng.randbytes(rng.randrange(1, 400000))
        try:
            fd = os.open(os.path.join(mnt, name), os.O_CREAT | os.O_WRONLY | os.O_TRUNC)
            os.write(fd, data)
            os.fsync(fd)
            os.close(fd)
            written.append(name)
            log.write(json.dumps({"file": name, "sha": hashlib.sha256(data).hexdigest()}) + "\n")
            log.flush()
            if i % 7 == 6:
                with socket.socket(socket.AF_UNIX) as s:
                    s.connect(sock_path)
                    s.sendall(json.dumps({"op": "snapshot", "wait": True}).encode() + b"\n")
                    reply = json.loads(s.makefile().readline())
                if reply.get("ok") and reply["snapshot"]["durable"]:
                    log.write(json.dumps({"snap": reply["snapshot"]["id"], "files": list(written)}) + "\n")
                    log.flush()
        except (OSError, ValueError):
            break
'''


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def start_writer(mnt: Path, log_path: Path, seed: int) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", WRITER, str(mnt), str(log_path), str(seed),
                             str(control_socket_path(mnt))])


def check_acknowledged(workspace: Workspace, mnt: Path, log_path: Path, crashes: int) -> None:
    """Every file whose fsync returned reads back whole, and every snapshot reported durable
    holds every file written before it; then fsck finds nothing wrong."""
    entries = [json.loads(line) for line in log_path.read_text().splitlines()]
    files = {e["file"]: e["sha"] for e in entries if "file" in e}
    snaps = [e for e in entries if "snap" in e]
    assert len(files) > crashes and snaps, "the workload must have acknowledged writes and snapshots"
    drop_caches()
    for name, digest in files.items():
        assert sha((mnt / name).read_bytes()) == digest, name
    store = Store.open(workspace.store, readonly=True)
    try:
        for entry in snaps:
            tree = Tree.at_snapshot(store, store.resolve_snapshot(entry["snap"]))
            for name in entry["files"]:
                ino, attrs = tree.resolve(name.encode())
                assert sha(tree.read(ino, 0, attrs.size)) == files[name]
    finally:
        store.close()
    fsck = workspace.cli("fsck", check=False)
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr


def start_gc(workspace: Workspace) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "cowfs.cli.main", "gc"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env={**os.environ, "COWFS_STORE": str(workspace.store)})


def test_kill_9_at_random_points_loses_nothing_acknowledged(workspace, tmp_path):
    rng = random.Random(1234)
    log_path = tmp_path / "acknowledged.jsonl"
    mnt = workspace.mount()
    kill_points = int(os.environ.get("COWFS_KILL_POINTS", "8"))  # the soak sets more
    for round_number in range(kill_points):
        writer = start_writer(mnt, log_path, round_number)
        gc = start_gc(workspace) if round_number % 2 else None
        time.sleep(rng.uniform(0.2, 1.5))
        os.kill(workspace.daemon_pid(mnt), signal.SIGKILL)
        if gc is not None:
            gc.kill()
            gc.wait()
        writer.wait(timeout=60)
        workspace.cli("mount", str(mnt))  # clears the stale mount, new daemon
    check_acknowledged(workspace, mnt, log_path, kill_points)


def test_kill_9_while_the_idle_daemon_compresses_loses_nothing(workspace):
    """A daemon killed while it moves raw chunks into compressed ones (some slices switched,
    one perhaps appended and not switched) leaves every byte readable; the next daemon finishes
    the job and fsck finds the store whole."""
    mnt = workspace.mount()
    rng = random.Random(19)
    text = b"".join(b"%d,%d,%d\n" % (i, rng.randrange(10**6), i % 97) for i in range(7_000_000))
    write_fast(mnt / "table.csv", text)

    def stats() -> tuple[list[int], int]:
        store = Store.open(workspace.store, readonly=True)
        try:
            return store.uncompressed_packs(), store.stats()["chunk_stored_bytes"]
        finally:
            store.close()

    pending, stored_raw = stats()
    assert pending and stored_raw > len(text) * 0.9, "the fast write was compressed at once"
    deadline = time.monotonic() + 60
    while stats()[1] == stored_raw:  # the idle daemon's first slice switched: kill it mid-way
        assert time.monotonic() < deadline, "the idle daemon never began to compress"
        time.sleep(0.01)
    os.kill(workspace.daemon_pid(mnt), signal.SIGKILL)
    workspace.cli("mount", str(mnt))  # clears the stale mount, new daemon
    drop_caches()
    assert hashlib.sha256((mnt / "table.csv").read_bytes()).digest() == hashlib.sha256(text).digest()
    deadline = time.monotonic() + 120
    while stats()[0]:
        assert time.monotonic() < deadline, "the next daemon did not finish compressing"
        time.sleep(0.2)
    assert stats()[1] < len(text) / 2
    workspace.umount(mnt)
    fsck = workspace.cli("fsck", check=False)
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr
    mnt = workspace.mount()
    assert hashlib.sha256((mnt / "table.csv").read_bytes()).digest() == hashlib.sha256(text).digest()


class CrashDisk:
    """A directory standing for a disk, mounted through crashfs until it 'loses power'."""

    def __init__(self, backing: Path, mountpoint: Path) -> None:
        self.backing, self.mountpoint = backing, mountpoint
        backing.mkdir()
        mountpoint.mkdir()
        self.process: subprocess.Popen | None = None

    def power_on(self, seed: int) -> None:
        self.process = subprocess.Popen([sys.executable, str(CRASHFS), str(self.backing), str(self.mountpoint),
                                         str(seed)], stdout=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 20
        while not os.path.ismount(self.mountpoint):
            assert self.process.poll() is None and time.monotonic() < deadline, "crashfs did not mount"
            time.sleep(0.02)

    def power_cut(self) -> str:
        """Apply a random part of what was not fsynced, forget the rest, unmount."""
        self.process.send_signal(signal.SIGUSR1)
        report = self.process.communicate(timeout=60)[0]
        self.process = None
        if os.path.ismount(self.mountpoint):
            detach_stale(self.mountpoint)
        return report

    def tear_down(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()
        if os.path.ismount(self.mountpoint):
            detach_stale(self.mountpoint)


@pytest.fixture
def crash_disk(tmp_path):
    disk = CrashDisk(tmp_path / "disk", tmp_path / "crashfs")
    try:
        yield disk
    finally:
        disk.tear_down()


def test_machine_crash_between_fsyncs_loses_nothing_acknowledged(crash_disk, tmp_path):
    """The daemon, the writer and the disk all stop at once; the disk keeps a random part of
    what was written since the last fsync. Repeated on the same store, recovering each time."""
    rng = random.Random(99)
    log_path = tmp_path / "acknowledged.jsonl"
    workspace = Workspace(tmp_path, crash_disk.mountpoint / "store")
    crash_points = int(os.environ.get("COWFS_CRASH_POINTS", "4"))
    lost_pages = 0
    crash_disk.power_on(seed=0)
    try:
        workspace.cli("init")
        for round_number in range(crash_points):
            mnt = workspace.mount()  # at once, on whatever the last crash left
            writer = start_writer(mnt, log_path, round_number)
            gc = start_gc(workspace) if round_number % 2 else None  # the machine dies during gc too
            time.sleep(rng.uniform(0.5, 2.0))
            os.kill(workspace.daemon_pid(mnt), signal.SIGKILL)
            for process in (writer, gc):
                if process is not None:
                    process.kill()
                    process.wait()
            report = crash_disk.power_cut()
            lost_pages += int(report.split("pages_lost=")[1].split()[0])
            detach_stale(mnt)
            workspace.mounts.remove(mnt)
            crash_disk.power_on(seed=round_number + 1)
        assert lost_pages, "each crash must have lost something for this test to mean anything"
        mnt = workspace.mount()
        check_acknowledged(workspace, mnt, log_path, crash_points)
    finally:
        workspace.unmount_all()
        _reap_daemons(workspace.store)
