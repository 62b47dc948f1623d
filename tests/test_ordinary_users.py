"""cowfs as ordinary users on a shared machine (issues 13 and 14): the README flow and the
kernel extension work without root, with the store in the user's home; another user, and
root, are refused in one line wherever they reach for what is not theirs."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import textwrap
from pathlib import Path

from conftest import needs_fuse, run_cli

pytestmark = needs_fuse


def one_line_failure(result, *fragments: str) -> str:
    """A refusal a user can read: non-zero exit, one line on stderr, no traceback."""
    message = result.stderr.strip()
    assert result.returncode != 0, f"expected a failure, got:\n{result.stdout}"
    assert "Traceback" not in message and len(message.splitlines()) == 1, message
    for fragment in fragments:
        assert fragment in message, message
    return message


def ok(result):
    assert result.returncode == 0, f"{result.args}\nstdout: {result.stdout}\nstderr: {result.stderr}"
    return result.stdout


def test_readme_flow_as_an_ordinary_user(ann, workspace):
    workspace.mount()  # another user's (root's) mount: listed, but not as one of ann's
    work, back = ann.home / "work", ann.home / "back"
    ok(ann.cowfs("init"))
    store = ann.home / ".local/share/cowfs/default"
    assert stat.S_IMODE(store.stat().st_mode) == 0o700 and store.stat().st_uid == ann.uid
    ok(ann.cowfs("mount", str(work)))  # created (the last component only), as `git worktree add` does
    assert ok(ann.run("stat", "-c", "%u", str(work))).strip() == str(ann.uid)
    ok(ann.run("sh", "-c", f"echo before > {work}/model.txt"))
    snapshot = json.loads(ok(ann.cowfs("snap", "--json", "-m", "before training", str(work))))
    ok(ann.run("sh", "-c", f"echo after > {work}/model.txt"))
    assert "before training" in ok(ann.cowfs("log"))
    ok(ann.cowfs("mount", snapshot["id"], str(back)))
    assert ok(ann.run("cat", f"{back}/model.txt")) == "before\n"
    ok(ann.run("sh", "-c", f"echo branch > {back}/model.txt"))
    assert ok(ann.run("cat", f"{work}/model.txt")) == "after\n"
    status = json.loads(ok(ann.cowfs("status", "--json")))
    own = [m["mountpoint"] for m in status["mounts"] if m.get("store") == str(store)]
    assert sorted(own) == sorted([str(work), str(back)])
    assert str(workspace.mounts[0]) in [m["mountpoint"] for m in status["mounts"]]
    sockets = [p for p in Path(f"/tmp/cowfs-{ann.uid}").glob("*") if p.is_socket()] + \
        [p for p in (ann.home / ".cache/cowfs/run").glob("*") if p.is_socket()]
    assert sockets and all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in sockets)
    for mountpoint in (back, work):
        ok(ann.cowfs("umount", str(mountpoint)))
    assert not ann.own_mounts()


def test_mount_from_inside_a_clone_of_cowfs(ann):
    """The daemon must not import whatever `cowfs/` the caller's working directory holds."""
    clone = ann.home / "cowfs-clone"
    shutil.copytree(Path(__file__).resolve().parent.parent / "cowfs", clone / "cowfs")
    shutil.chown(clone, ann.name)
    ok(ann.cowfs("init"))
    ok(ann.cowfs("mount", str(ann.home / "work"), cwd=clone))
    ok(ann.cowfs("umount", str(ann.home / "work")))


def test_another_user_is_refused_everywhere_in_one_line(ann, bob):
    ann.home.chmod(0o755)  # as many distributions leave homes: the store and mount must hold alone
    try:
        ok(ann.cowfs("init"))
        work = ann.home / "work"
        ok(ann.cowfs("mount", str(work)))
        ok(ann.run("sh", "-c", f"echo private > {work}/secret.txt"))
        store = ann.home / ".local/share/cowfs/default"

        listing = bob.python(f"import os; os.listdir({str(work)!r})")
        assert "PermissionError" in listing.stderr  # a FUSE mount without allow_other
        one_line_failure(bob.cowfs("snap", str(work)), "another user", str(ann.uid))
        one_line_failure(bob.cowfs("--store", str(store), "log"), "not to you")
        one_line_failure(bob.cowfs("log", "--store", str(store)), "not to you")
        one_line_failure(bob.cowfs("mount", "--store", str(store), str(bob.home / "w")))
        one_line_failure(bob.cowfs("umount", str(work)), "another user")
        ok(bob.cowfs("init"))
        status = bob.cowfs("status")
        assert f"{work}" in ok(status) and "another user" in status.stdout
        assert "no cowfs daemon is running" not in status.stdout

        sockets = [p for p in Path(f"/tmp/cowfs-{ann.uid}").glob("*")]
        for path in sockets:
            attempt = bob.python(f"import socket; socket.socket(socket.AF_UNIX).connect({str(path)!r})")
            assert "PermissionError" in attempt.stderr, attempt.stderr
        assert ok(ann.run("cat", f"{work}/secret.txt")) == "private\n"  # all the while, ann's mount serves
    finally:
        ann.home.chmod(0o700)


def test_a_runtime_directory_squatted_by_another_user_is_passed_over(ann, bob):
    """Issue 14, hole 1, as written: bob makes /tmp/cowfs-<ann's uid> first, mode 0777."""
    squatted = Path(f"/tmp/cowfs-{ann.uid}")
    shutil.rmtree(squatted, ignore_errors=True)
    ok(bob.run("sh", "-c", f"mkdir {squatted} && chmod 0777 {squatted}"))
    try:
        ok(ann.cowfs("init"))
        ok(ann.cowfs("mount", str(ann.home / "work")))
        assert squatted.stat().st_uid == bob.uid and not any(squatted.iterdir()), "nothing of ann's went there"
        ok(ann.cowfs("snap", str(ann.home / "work")))
        ok(ann.cowfs("status"))
        ok(ann.cowfs("umount", str(ann.home / "work")))
    finally:
        shutil.rmtree(squatted, ignore_errors=True)


def test_root_never_follows_links_planted_in_a_users_store(ann, tmp_path):
    """Issue 14, hole 2, as written: ann opens her store to all and plants links to root-only
    files; root mounting that store must refuse and leave both files as they were."""
    ok(ann.cowfs("--store", str(ann.home / "st"), "init"))
    secret, log_target = tmp_path / "shadow-like", tmp_path / "root.log"
    secret.write_text("root only\n")
    log_target.write_text("root log\n")
    for path in (secret, log_target):
        path.chmod(0o600)
    plant = f"""
        chmod -R a+rX {ann.home}
        mkdir -p {ann.home}/st/locks {ann.home}/st/logs
        rm -f {ann.home}/st/locks/branch-1 {ann.home}/st/logs/main.log
        ln -s {secret} {ann.home}/st/locks/branch-1
        ln -s {log_target} {ann.home}/st/logs/main.log
    """
    ok(ann.run("sh", "-c", textwrap.dedent(plant)))
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    refused = run_cli("--store", str(ann.home / "st"), "mount", str(mountpoint), check=False)
    one_line_failure(refused, "not to you")
    assert secret.read_text() == "root only\n" and log_target.read_text() == "root log\n"
    assert not os.path.ismount(mountpoint)  # root's own mount point: root may look


def test_a_store_under_a_directory_others_can_write_is_refused(ann):
    shared = ann.home.parent.parent / "shared"
    shutil.rmtree(shared, ignore_errors=True)
    shared.mkdir()
    shared.chmod(0o777)  # not sticky: anyone could swap the store for their own
    try:
        one_line_failure(ann.cowfs("--store", str(shared / "st"), "init"), "writable by others")
        assert not (shared / "st").exists() or not any((shared / "st").iterdir())
    finally:
        shutil.rmtree(shared)


def test_root_cannot_take_a_users_live_mount_for_a_dead_one(ann, tmp_path):
    """Issue 14, hole 7: root's umount and mount of ann's live mount are refused, and ann's
    mount keeps serving, with nothing lost."""
    ok(ann.cowfs("init"))
    work = ann.home / "work"
    ok(ann.cowfs("mount", str(work)))
    ok(ann.run("sh", "-c", f"echo kept > {work}/f"))
    one_line_failure(run_cli("umount", str(work), check=False), "another user", "not stale")
    run_cli("--store", str(tmp_path / "st"), "init")
    one_line_failure(run_cli("--store", str(tmp_path / "st"), "mount", str(work), check=False), "another user")
    assert ok(ann.run("cat", f"{work}/f")) == "kept\n"
    ok(ann.cowfs("umount", str(work)))


def test_bad_input_as_an_ordinary_user_is_one_line(ann, tmp_path):
    ok(ann.cowfs("init"))
    for args, fragment in [
        (["mount", "/proc/version"], "not a directory"),
        (["mount", str(ann.home / "nowhere" / "x")], "does not exist"),
        (["snap", "/tmp"], "not inside a cowfs mount"),
        (["log", "--store", "/etc"], ""),
        (["mount", "@404", str(ann.home / "b")], "@404"),
        (["mount", "--branch", "../../x", "@1", str(ann.home / "b")], ""),
    ]:
        one_line_failure(ann.cowfs(*args), fragment)
    readonly = ann.home / "ro-store"
    ok(ann.cowfs("--store", str(readonly), "init"))
    ok(ann.run("chmod", "-R", "a-w", str(readonly)))
    try:
        one_line_failure(ann.cowfs("--store", str(readonly), "mount", str(ann.home / "w")))
        ok(ann.cowfs("--store", str(readonly), "log"))  # reading still works
    finally:
        ok(ann.run("chmod", "-R", "u+w", str(readonly)))


NOTEBOOK_SCRIPT = """
import json, sys
import nbformat
from nbclient import NotebookClient
from nbformat.v4 import new_code_cell, new_notebook

def run(directory, sources):
    notebook = new_notebook(cells=[new_code_cell(s) for s in sources])
    NotebookClient(notebook, timeout=60, kernel_name="python3", allow_errors=True,
                   resources={"metadata": {"path": directory}}).execute()
    return ["".join(o.get("text", "") for o in c.outputs if o.get("name") == "stdout") for c in notebook.cells]

print(json.dumps(run(sys.argv[1], sys.argv[2:])))
"""


def test_kernel_extension_as_an_ordinary_user(ann):
    ok(ann.cowfs("init"))
    work, back = ann.home / "work", ann.home / "back"
    ok(ann.cowfs("mount", str(work)))
    ok(ann.cowfs("kernel", "install"))
    script = ann.home / "notebook.py"
    script.write_text(NOTEBOOK_SCRIPT)
    ok(ann.python_script(str(script), str(work),
               "import pathlib\nrows = list(range(5))\npathlib.Path('out.txt').write_text('one')",
               "rows.append(99)\npathlib.Path('out.txt').write_text('two')", timeout=180))
    ok(ann.cowfs("snap", "--wait", str(work)))
    runs = json.loads(ok(ann.cowfs("log", "--cells", "--json", cwd=work)))
    assert [r["first_line"] for r in runs] == ["rows.append(99)", "import pathlib"]
    assert {r["variables"] for r in runs} == {"complete"}
    before_second = runs[0]["before"]
    ok(ann.cowfs("mount", before_second, str(back)))
    outputs = json.loads(ok(ann.python_script(str(script), str(back),
                                    f"%cowfs restore {before_second}", "print(rows, open('out.txt').read())",
                                    timeout=180)))
    assert outputs[1].strip() == "[0, 1, 2, 3, 4] one"
    key = ann.home / ".config/cowfs/variables.key"
    assert key.stat().st_uid == ann.uid and stat.S_IMODE(key.stat().st_mode) == 0o600
    for mountpoint in (back, work):
        ok(ann.cowfs("umount", str(mountpoint)))


def test_socket_fuzz_leaves_the_mount_serving_and_the_store_clean(ann, bob):
    """Issue 14, holes 4 and 5 as an ordinary user's daemon: everything a client may send or
    withhold, then the mount still serves and fsck finds nothing."""
    ok(ann.cowfs("init"))
    work = ann.home / "work"
    ok(ann.cowfs("mount", str(work)))
    fuzz = f"""
import json, os, random, socket, time
from cowfs.daemon.addresses import find_control_socket
path = str(find_control_socket({str(work)!r}))
rng = random.Random(7)
def connect():
    for _ in range(500):  # a full backlog says EAGAIN to a client with a timeout: wait for the daemon
        s = socket.socket(socket.AF_UNIX); s.settimeout(15)
        try:
            s.connect(path); return s
        except BlockingIOError:
            s.close(); time.sleep(0.01)
    raise SystemExit("the daemon stopped accepting connections")
def send(data, read=True):
    s = connect()
    try: s.sendall(data)
    except OSError: return s  # the daemon hung up on garbage before reading it all
    if read:
        s.shutdown(socket.SHUT_WR)
        try: s.recv(65536)
        except OSError: pass
    return s
for _ in range(200):
    send(bytes(rng.randrange(256) for _ in range(rng.randrange(1, 300))))
send(b'{{"op": "status"')            # truncated
send(b'[' * 100000 + b']' * 100000 + b'\\n')  # deeply nested
send(b'{{"op": "' + b'x' * 3_000_000 + b'"}}\\n')  # huge
send(json.dumps({{"op": "snapshot", "label": 5, "meta": [1]}}).encode() + b'\\n')
idle = [send(b'', read=False) for _ in range(300)]  # slow and idle clients
time.sleep(1)
s = send(json.dumps({{"op": "status"}}).encode() + b'\\n', read=False)
s.shutdown(socket.SHUT_WR)
print(s.recv(65536).decode().strip())
"""
    reply = ok(ann.python_script("-c", fuzz, timeout=120))
    assert json.loads(reply.splitlines()[-1])["ok"] is True
    ok(ann.run("sh", "-c", f"echo still > {work}/after-fuzz"))
    ok(ann.cowfs("snap", "--wait", str(work)))
    ok(ann.cowfs("umount", str(work)))
    assert "no damage" in ok(ann.cowfs("fsck"))


def test_the_daemon_refuses_another_users_client_even_when_its_socket_is_reachable(ann, bob):
    """The peer-uid check holds on its own: with the socket and its directory opened to all,
    bob's `stop` is refused and ann's mount stays."""
    ok(ann.cowfs("init"))
    work = ann.home / "work"
    ok(ann.cowfs("mount", str(work)))
    path = next(p for p in Path(f"/tmp/cowfs-{ann.uid}").glob("*") if p.is_socket())
    modes = stat.S_IMODE(path.stat().st_mode), stat.S_IMODE(path.parent.stat().st_mode)
    path.chmod(0o666)
    path.parent.chmod(0o755)
    try:
        attempt = bob.python(
            "import socket; s = socket.socket(socket.AF_UNIX); s.settimeout(10); "
            f"s.connect({str(path)!r}); s.sendall(b'{{\"op\": \"stop\"}}\\n'); print(s.recv(4096).decode())")
        assert '"ok": true' not in attempt.stdout and '"ok":true' not in attempt.stdout, attempt.stdout
    finally:
        path.chmod(modes[0])
        path.parent.chmod(modes[1])
    assert ann.own_mounts() == [str(work)]
    assert ok(ann.cowfs("status", "--json"))
    ok(ann.cowfs("umount", str(work)))


def test_everyday_tools_as_an_ordinary_user(ann):
    """tar, git and sqlite in the workspace, then the snapshot holds the same tree."""
    ok(ann.cowfs("init"))
    work, back = ann.home / "work", ann.home / "back"
    ok(ann.cowfs("mount", str(work)))
    stdlib = Path(os.__file__).parent
    tarball = ann.home / "src.tar"
    subprocess.run(["tar", "cf", str(tarball), "-C", str(stdlib), "json", "email", "logging"], check=True)
    tarball.chmod(0o644)
    script = f"""
        set -e
        mkdir {work}/src && tar xf {tarball} -C {work}/src
        cd {work}/src && git init -q && git add -A && git -c user.email=a@b -c user.name=ann commit -qm one
        git -c user.email=a@b -c user.name=ann mv json json2 && git -c user.email=a@b -c user.name=ann commit -qm two
        git fsck --no-progress 2>&1
        sqlite3 {work}/db.sqlite "create table t(x); insert into t values (1),(2),(3);"
        test "$(sqlite3 {work}/db.sqlite 'select sum(x) from t')" = 6
    """
    ok(ann.run("sh", "-c", textwrap.dedent(script)))
    snapshot = json.loads(ok(ann.cowfs("snap", "--json", "--wait", str(work))))
    ok(ann.cowfs("mount", snapshot["id"], str(back)))
    ok(ann.run("diff", "-r", "--no-dereference", str(work), str(back)))
    assert ok(ann.run("git", "-C", f"{back}/src", "log", "--format=%s")).split() == ["two", "one"]
    for mountpoint in (back, work):
        ok(ann.cowfs("umount", str(mountpoint)))
