"""Never lose a byte: crashes, corruption, retention with live mounts, hostile input."""

from __future__ import annotations

import errno
import json
import os
import random
import socket
import subprocess
import sys
import time

import pytest

from conftest import corrupt_first_chunk, drop_caches, needs_fuse, write_fast
from cowfs.daemon.addresses import control_socket_path

pytestmark = needs_fuse


def test_corrupt_chunk_is_eio_and_a_report_the_rest_keeps_working(workspace):
    mnt = workspace.mount()
    (mnt / "victim").write_bytes(os.urandom(300000))
    workspace.snap(mnt, "s", wait=True)
    workspace.umount(mnt)
    corrupt_first_chunk(workspace.store)
    mnt = workspace.mount()
    (mnt / "fine").write_text("still works")
    drop_caches()
    with pytest.raises(OSError) as raised:
        (mnt / "victim").read_bytes()
    assert raised.value.errno == errno.EIO
    assert (mnt / "fine").read_text() == "still works"
    log = (workspace.store / "logs" / "main.log").read_text()
    assert "victim" in log and "fails its hash check" in log
    assert json.loads(workspace.cli("status", "--json").stdout)["needs_fsck"] is True
    fsck = workspace.cli("fsck", check=False)
    assert fsck.returncode == 1 and "victim has data in a damaged chunk" in fsck.stdout


def test_prune_and_gc_while_mounted_keep_every_kept_snapshot(workspace):
    mnt = workspace.mount()
    history = {}
    for version in range(40):
        (mnt / "table.csv").write_bytes(os.urandom(64 << 10) + b"%d" % version)
        (mnt / f"note{version % 5}").write_text(f"v{version}")
        snap = workspace.snap(mnt, f"v{version}", wait=True)
        history[snap["id"]] = (mnt / "table.csv").read_bytes()
    pinned = next(iter(history))
    workspace.cli("pin", pinned)
    status_before = json.loads(workspace.cli("status", "--json").stdout)
    before = status_before["chunk_stored_bytes"]
    pruned = json.loads(workspace.cli("prune", "--keep-last", "5", "--json").stdout)
    assert len(pruned["removed"]) == 34 and pinned in pruned["kept"]
    (mnt / "during-gc").write_bytes(b"x" * 100000)  # the mount stays live throughout
    gc = json.loads(workspace.cli("gc", "--json").stdout)
    assert gc["chunks_removed"] >= 30
    status_after = json.loads(workspace.cli("status", "--json").stdout)
    after = status_after["chunk_stored_bytes"]
    assert after < before / 4
    # the live daemon finished its pack when asked, so the disk space really came back
    assert status_after["store_bytes"] < status_before["store_bytes"] / 2
    for snap_id in pruned["kept"]:
        back = workspace.mount(snap_id, name=f"back{snap_id[1:]}")
        assert (back / "table.csv").read_bytes() == history[snap_id]
        workspace.umount(back)
    assert (mnt / "during-gc").read_bytes() == b"x" * 100000
    assert workspace.cli("fsck").returncode == 0
    rm_pinned = workspace.cli("rm", pinned, check=False)
    assert rm_pinned.returncode == 1 and "pinned" in rm_pinned.stderr


def test_malformed_control_requests_change_nothing(workspace):
    mnt = workspace.mount()
    (mnt / "keep").write_bytes(b"precious")
    sock_path = str(control_socket_path(mnt))
    rng = random.Random(7)
    payloads = [b"\n", b"{}\n", b"[]\n", b"null\n", b'{"op": 5}\n', b'{"op": "rm -rf /"}\n',
                b'{"op": "snapshot", "label": {"x": 1}}\n', b'{"op": "snapshot", "label": "a\\nb"}\n',
                b'{"op": "snapshot", "meta": [1]}\n', b"\xff\xfe\x00garbage\n", b'{"op": "snapshot", "label": "'
                + b"x" * 5000 + b'"}\n']
    payloads += [bytes(rng.randrange(256) for _ in range(rng.randrange(1, 200))) + b"\n" for _ in range(100)]
    for payload in payloads:
        with socket.socket(socket.AF_UNIX) as conn:
            conn.settimeout(10)
            conn.connect(sock_path)
            conn.sendall(payload)
            reply = conn.makefile("rb").readline()
            assert reply == b"" or json.loads(reply)["ok"] is False
    assert (mnt / "keep").read_bytes() == b"precious"
    assert workspace.snap(mnt, "after fuzz")["id"].startswith("@")
    assert json.loads(workspace.cli("log", "--json").stdout)[0]["label"] == "after fuzz"


def test_no_client_can_take_the_mount_down(workspace):
    """Issue 14, holes 4 and 5: deeply nested, huge, truncated and withheld requests, and more
    idle connections than the daemon serves at once."""
    mnt = workspace.mount()
    (mnt / "keep").write_bytes(b"precious")
    sock_path = str(control_socket_path(mnt))

    def ask(payload: bytes) -> bytes:
        with socket.socket(socket.AF_UNIX) as conn:
            conn.settimeout(30)
            conn.connect(sock_path)
            try:
                conn.sendall(payload)
                conn.shutdown(socket.SHUT_WR)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the daemon refused the rest (too large): its answer may still be there
            try:
                return conn.makefile("rb").readline()
            except ConnectionResetError:
                return b""

    nested = ask(b"[" * 200_000 + b"]" * 200_000 + b"\n")
    assert json.loads(nested) == {"ok": False, "error": "malformed request: nested too deeply"}
    too_big = ask(b'{"op": "status", "pad": "' + b"x" * (2 << 20) + b'"}\n')
    assert too_big == b"" or "too large" in json.loads(too_big)["error"]
    assert ask(b'{"op": "sta') == b"" or json.loads(ask(b'{"op": "sta'))["ok"] is False  # truncated
    deep_meta = b'{"op": "snapshot", "label": "deep", "meta": ' + b'{"a": ' * 5000 + b"1" + b"}" * 5000 + b"}\n"
    assert json.loads(ask(deep_meta))["ok"] is False
    idle = []
    try:
        for _ in range(300):  # far more than MAX_CONNECTIONS, none of them saying anything
            conn = socket.socket(socket.AF_UNIX)
            conn.connect(sock_path)
            idle.append(conn)
        assert workspace.snap(mnt, "while crowded")["id"].startswith("@"), "a real client is still served"
    finally:
        for conn in idle:
            conn.close()
    assert (mnt / "keep").read_bytes() == b"precious"
    assert workspace.cli("fsck").returncode == 0


def test_branch_names_are_names_not_paths(workspace):
    """Issue 14, hole 6: --branch ../../x once wrote a log file outside the store."""
    mnt = workspace.mount()
    (mnt / "f").write_text("x")
    snap = workspace.snap(mnt, "one")["id"]
    escape = workspace.root / "escaped"
    target = workspace.root / "target"
    target.mkdir()
    result = workspace.cli("mount", snap, str(target), "--branch", f"../../{escape.name}", check=False)
    assert result.returncode != 0 and "is not a usable branch name" in result.stderr
    assert not list(workspace.root.glob("escaped*")) and not os.path.ismount(target)
    good = workspace.mount(snap, name="good", branch="from-one_v2.1")
    assert (good / "f").read_text() == "x"


def test_other_users_cannot_reach_the_daemon_or_the_mount(workspace):
    mnt = workspace.mount()
    (mnt / "secret").write_text("mine")
    probe = r'''
import os, socket, sys
os.setgid(65534); os.setuid(65534)
results = []
try:
    s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); results.append("socket-open")
except OSError as e:
    results.append(f"socket-{e.errno}")
try:
    open(sys.argv[2]).read(); results.append("mount-open")
except OSError as e:
    results.append(f"mount-{e.errno}")
print(",".join(results))
'''
    out = subprocess.run([sys.executable, "-c", probe, str(control_socket_path(mnt)), str(mnt / "secret")],
                         capture_output=True, text=True, check=True).stdout.strip()
    assert out == f"socket-{errno.EACCES},mount-{errno.EACCES}"


def test_disk_full_fails_writes_and_recovers(tmp_path):
    """The store on a small filesystem: ENOSPC reaches the writer, nothing is corrupted, and
    everything works again once space returns."""
    from conftest import Workspace

    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48m", "tmpfs", str(small)], check=True)
    ws = Workspace(tmp_path, small / "store")
    try:
        ws.cli("init")
        mnt = ws.mount()
        (mnt / "before").write_bytes(b"safe" * 1000)
        ws.snap(mnt, "safe", wait=True)
        filler = small / "filler"
        with open(filler, "wb") as handle:
            try:
                while True:
                    handle.write(b"\0" * (1 << 20))
            except OSError:
                pass
        failure = None
        try:
            with open(mnt / "big", "wb") as handle:
                handle.write(os.urandom(8 << 20))
                handle.flush()
                os.fsync(handle.fileno())
        except OSError as exc:
            failure = exc
        daemon_log = (small / "store" / "logs" / "main.log").read_text()
        assert failure is not None and failure.errno == errno.ENOSPC, daemon_log
        assert (mnt / "before").read_bytes() == b"safe" * 1000
        filler.unlink()
        with open(mnt / "big", "wb") as handle:
            handle.write(b"y" * (4 << 20))
            handle.flush()
            os.fsync(handle.fileno())
        ws.umount(mnt)
        mnt = ws.mount()
        assert (mnt / "big").read_bytes() == b"y" * (4 << 20)
        assert ws.cli("fsck").returncode == 0
    finally:
        ws.unmount_all()
        subprocess.run(["umount", "-l", str(small)], check=False)


def test_a_fast_write_is_stored_raw_and_compressed_once_the_mount_is_idle(workspace):
    """fsync of a large write waits for the disk, not for zstd: the flusher stores what it is
    behind on raw and the idle daemon compresses it later. The space comes back, every byte
    reads back after a remount, and fsck finds the store whole."""
    mnt = workspace.mount()
    text = b"".join(b"%d,%d,%d\n" % (i, i * 7, i * i) for i in range(6_000_000))  # ~150 MiB
    write_fast(mnt / "features.csv", text)

    def status() -> dict:
        return json.loads(workspace.cli("status", "--json").stdout)

    before = status()
    assert before["uncompressed_packs"] >= 1 and before["chunk_stored_bytes"] > len(text) / 2
    for _ in range(240):
        after = status()
        if after["uncompressed_packs"] == 0:
            break
        time.sleep(0.5)
    assert after["uncompressed_packs"] == 0, "the idle daemon never compressed what it stored raw"
    assert after["chunk_stored_bytes"] < len(text) / 2
    assert after["store_bytes"] < before["store_bytes"] - len(text) / 3, "the raw packs were not deleted"
    workspace.umount(mnt)
    mnt = workspace.mount()
    drop_caches()
    assert (mnt / "features.csv").read_bytes() == text
    assert workspace.cli("fsck").returncode == 0
