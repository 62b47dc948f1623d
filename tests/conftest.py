"""Shared fixtures. Mounted tests start real daemons through the real CLI, each in its own
temporary directory, and tear every mount down even when the test fails."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from cowfs.daemon.addresses import cowfs_mounts
from cowfs.fs.store import Store

FUSE_OK = os.path.exists("/dev/fuse") and os.geteuid() == 0
needs_fuse = pytest.mark.skipif(not FUSE_OK, reason="mounted tests need /dev/fuse and root")


def run_cli(*args: str, store: Path | None = None, cwd: Path | None = None, check: bool = True,
            timeout: float = 120) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    if store is not None:
        env["COWFS_STORE"] = str(store)
    result = subprocess.run([sys.executable, "-m", "cowfs.cli.main", *args], capture_output=True, text=True,
                            env=env, cwd=cwd, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"cowfs {' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


def write_fast(path: Path, data: bytes) -> None:
    """Write as a program streaming out a large file does, 1 MiB at a time, then fsync: the
    pace at which the daemon stores data raw to keep up (docs/write-path.md)."""
    with open(path, "wb") as out:
        for start in range(0, len(data), 1 << 20):
            out.write(data[start:start + (1 << 20)])
        os.fsync(out.fileno())


def drop_caches() -> None:
    """Make the next read reach the daemon instead of the kernel's page cache."""
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3")


@dataclass
class Workspace:
    """A store plus the mounts a test made on it."""

    root: Path
    store: Path
    mounts: list[Path] = field(default_factory=list)

    def cli(self, *args: str, check: bool = True, cwd: Path | None = None) -> subprocess.CompletedProcess:
        return run_cli(*args, store=self.store, check=check, cwd=cwd)

    def mount(self, *source: str, name: str = "mnt", branch: str | None = None,
              options: tuple[str, ...] = ()) -> Path:
        mountpoint = self.root / name
        mountpoint.mkdir(exist_ok=True)
        extra = ["--branch", branch] if branch else []
        self.cli("mount", *source, str(mountpoint), *extra, *options)
        self.mounts.append(mountpoint)
        return mountpoint

    def umount(self, mountpoint: Path) -> None:
        self.cli("umount", str(mountpoint))
        self.mounts.remove(mountpoint)

    def snap(self, mountpoint: Path, label: str = "", wait: bool = False) -> dict:
        args = ["snap", "--json", "-m", label, str(mountpoint)] + (["--wait"] if wait else [])
        return json.loads(self.cli(*args).stdout)

    def daemon_pid(self, mountpoint: Path) -> int:
        from cowfs.cli.client import request

        return request(mountpoint, {"op": "status"})["pid"]

    def open_store(self) -> Store:
        """As a command opens it: after our daemons listed the snapshots they took."""
        from cowfs.cli.client import open_store

        return open_store(self.store, readonly=True)

    def unmount_all(self) -> None:
        """Unmount everything this workspace mounted, by force where a clean unmount fails."""
        for mountpoint in list(self.mounts):
            try:
                self.umount(mountpoint)
            except Exception:
                force_unmount(mountpoint)
                self.mounts.remove(mountpoint)


def corrupt_first_chunk(store_path: Path) -> None:
    """Flip one byte in the middle of the first chunk of the first pack."""
    from cowfs.fs.packs import scan_pack

    pack = sorted((store_path / "packs").glob("*.pack"))[0]
    _, _, offset, length = next(scan_pack(pack))
    with open(pack, "r+b") as handle:
        handle.seek(offset + length // 2)
        byte = handle.read(1)
        handle.seek(offset + length // 2)
        handle.write(bytes([byte[0] ^ 0x55]))


def force_unmount(mountpoint: Path) -> None:
    """Last resort when a clean unmount failed: kill the daemon, detach the mount."""
    try:
        from cowfs.cli.client import request

        pid = request(mountpoint, {"op": "status"}, timeout=5)["pid"]
        os.kill(pid, signal.SIGKILL)
    except Exception:
        pass
    from cowfs.cli.launcher import detach_stale

    detach_stale(mountpoint)


@pytest.fixture
def workspace(tmp_path: Path):
    if not FUSE_OK:
        pytest.skip("mounted tests need /dev/fuse and root")
    ws = Workspace(tmp_path, tmp_path / "store")
    ws.cli("init")
    try:
        yield ws
    finally:
        ws.unmount_all()
        for entry in cowfs_mounts():
            if entry.mountpoint.startswith(str(tmp_path)):
                force_unmount(Path(entry.mountpoint))
        _reap_daemons(ws.store)


def _reap_daemons(store: Path) -> None:
    """No test may leave a daemon behind: wait for those of this store to exit."""
    deadline = time.monotonic() + 20
    pattern = f"--store {store} "
    while time.monotonic() < deadline:
        left = [p for p in Path("/proc").glob("[0-9]*") if _cmdline(p).find(pattern) >= 0]
        if not left:
            return
        time.sleep(0.05)
    for proc in left:
        try:
            os.kill(int(proc.name), signal.SIGKILL)
        except ProcessLookupError:
            pass
    raise AssertionError(f"daemons of {store} were still running after the test")


def _cmdline(proc: Path) -> str:
    try:
        return (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


@pytest.fixture
def kernel_env(workspace, tmp_path, monkeypatch):
    """A workspace whose kernels load the extension, with IPython's and cowfs's per-user files
    (the variables' signing key) in the test's own directory."""
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
    monkeypatch.setenv("COWFS_STORE", str(workspace.store))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    workspace.cli("kernel", "install")
    return workspace


@pytest.fixture
def store(tmp_path: Path):
    opened = Store.init(tmp_path / "store")
    try:
        yield opened
    finally:
        opened.close()


@pytest.fixture(scope="session")
def ordinary_users():
    """Two ordinary users (created for the run, removed after it) who run cowfs from an
    environment of their own, with FUSE permissions as a standard Debian has them."""
    if not FUSE_OK:
        pytest.skip("creating users and mounting need root and /dev/fuse")
    import ordinary_users as users

    users.prepare_environment()
    modes = users.standard_fuse_permissions()
    made = [users.create_user("cowfs-ann"), users.create_user("cowfs-bob")]
    try:
        yield made
    finally:
        for user in made:
            users.remove_user(user.name)
        for path, mode in modes.items():
            os.chmod(path, mode)


@pytest.fixture
def ann(ordinary_users):
    ordinary_users[0].clean_up()
    yield ordinary_users[0]
    ordinary_users[0].clean_up()


@pytest.fixture
def bob(ordinary_users):
    ordinary_users[1].clean_up()
    yield ordinary_users[1]
    ordinary_users[1].clean_up()


@pytest.fixture
def lab(kernel_env, tmp_path):
    """A mount holding a notebook, and `jupyter lab` serving the directory above the mount
    (so branches opened beside it are served too); the server stops before the mount goes."""
    from lab_server import start_lab, stop_servers_under, write_notebook

    mnt = kernel_env.mount()
    write_notebook(mnt / "analysis.ipynb")
    server = start_lab(tmp_path, tmp_path / "jupyter")
    try:
        yield kernel_env, mnt, server
    finally:
        server.stop()
        stop_servers_under(tmp_path)
        kernel_env.mounts.extend(tmp_path.glob("mnt-at-*"))
