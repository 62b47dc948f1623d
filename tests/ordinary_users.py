"""Ordinary users for the tests, on a machine set up as a standard Debian is: `/dev/fuse` mode
0666 and a setuid `fusermount3`.

Notebook servers run as ordinary users (JupyterHub's and Docker's `jovyan`), so the product
must work, and refuse others, without root. The test venv's Python often lives where only root
may go (pyenv under /root), so the users get an environment of their own: a venv made from the
system Python under a world-readable directory, with a copy of this source tree installed in it
(not editable: the users cannot read a clone under /root, and an installed package is what a
user has).
"""

from __future__ import annotations

import os
import pwd
import shutil
import stat
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from cowfs.daemon.addresses import mounts

REPO = Path(__file__).resolve().parent.parent
BASE = Path("/var/tmp/cowfs-test-users")
VENV = BASE / "venv"
SYSTEM_PYTHON = "/usr/bin/python3"
SOURCE_PARTS = ("pyproject.toml", "setup.py", "README.md", "cowfs", "fs", "daemon", "cli")


def _run_root(*command: str, timeout: float = 900) -> None:
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    if result.returncode:
        raise RuntimeError(f"{' '.join(command)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")


def prepare_environment() -> Path:
    """The venv the users run cowfs from, with this tree's code in it; returns its bin dir."""
    BASE.mkdir(mode=0o755, exist_ok=True)
    os.chmod(BASE, 0o755)
    source = BASE / "src"
    shutil.rmtree(source, ignore_errors=True)
    source.mkdir()
    for part in SOURCE_PARTS:
        origin = REPO / part
        if origin.is_dir():
            shutil.copytree(origin, source / part, ignore=shutil.ignore_patterns("__pycache__", "*.so"))
        else:
            shutil.copy2(origin, source / part)
    if not (VENV / "bin" / "python").exists():
        _run_root(SYSTEM_PYTHON, "-m", "venv", str(VENV))
        _run_root(str(VENV / "bin" / "python"), "-m", "pip", "install", "-q", "--upgrade", "pip")
    # Dependencies once (kept between runs), then this tree's cowfs every time.
    _run_root(str(VENV / "bin" / "python"), "-m", "pip", "install", "-q", f"{source}[notebook]")
    _run_root(str(VENV / "bin" / "python"), "-m", "pip", "install", "-q", "--force-reinstall", "--no-deps",
              str(source))
    return VENV / "bin"


def standard_fuse_permissions() -> dict[str, int]:
    """Make FUSE usable by ordinary users as Debian ships it; returns the modes to restore."""
    before = {"/dev/fuse": stat.S_IMODE(os.stat("/dev/fuse").st_mode)}
    fusermount = shutil.which("fusermount3") or "/usr/bin/fusermount3"
    before[fusermount] = stat.S_IMODE(os.stat(fusermount).st_mode)
    os.chmod("/dev/fuse", 0o666)
    os.chmod(fusermount, before[fusermount] | stat.S_ISUID | 0o755)
    return before


@dataclass
class User:
    name: str
    uid: int
    gid: int
    home: Path

    def env(self, **extra: str) -> dict[str, str]:
        return {"HOME": str(self.home), "USER": self.name, "LOGNAME": self.name, "LANG": "C.UTF-8",
                "PATH": f"{VENV / 'bin'}:/usr/bin:/bin", **extra}

    def run(self, *command: str, cwd: Path | None = None, timeout: float = 120,
            **extra_env: str) -> subprocess.CompletedProcess:
        """Run a command as this user, in a clean login-like environment (no XDG_RUNTIME_DIR:
        like a user who reached the machine through `su` or a container)."""
        environment = [f"{key}={value}" for key, value in self.env(**extra_env).items()]
        # The user changes directory, not root: root may not enter a user's FUSE mount.
        enter = ["sh", "-c", 'cd "$0" && exec "$@"', str(cwd or self.home)]
        wrapped = ["runuser", "-u", self.name, "--", "env", "-i", *environment, *enter, *command]
        return subprocess.run(wrapped, capture_output=True, text=True, timeout=timeout, cwd="/")

    def cowfs(self, *args: str, **kwargs) -> subprocess.CompletedProcess:
        return self.run(str(VENV / "bin" / "cowfs"), *args, **kwargs)

    def python(self, code: str, **kwargs) -> subprocess.CompletedProcess:
        return self.run(str(VENV / "bin" / "python"), "-c", code, **kwargs)

    def python_script(self, *args: str, **kwargs) -> subprocess.CompletedProcess:
        return self.run(str(VENV / "bin" / "python"), *args, **kwargs)

    def own_mounts(self) -> list[str]:
        return [entry.mountpoint for entry in mounts() if entry.owner == self.uid]

    def clean_up(self) -> None:
        """Unmount what this user mounted (cleanly, else by force) and end their processes."""
        for mountpoint in self.own_mounts():
            if self.cowfs("umount", mountpoint, timeout=60).returncode:
                subprocess.run(["umount", "-l", mountpoint], check=False, capture_output=True)
        subprocess.run(["pkill", "-KILL", "-u", str(self.uid)], check=False, capture_output=True)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and subprocess.run(["pgrep", "-u", str(self.uid)],
                                                             capture_output=True).returncode == 0:
            time.sleep(0.05)


def create_user(name: str) -> User:
    remove_user(name)
    home = BASE / "home" / name
    home.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    _run_root("useradd", "--create-home", "--home-dir", str(home), "--shell", "/bin/sh", name)
    entry = pwd.getpwnam(name)
    return User(name, entry.pw_uid, entry.pw_gid, home)


def remove_user(name: str) -> None:
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        return
    for mount in mounts():
        if mount.owner == entry.pw_uid:
            subprocess.run(["umount", "-l", mount.mountpoint], check=False, capture_output=True)
    subprocess.run(["pkill", "-KILL", "-u", str(entry.pw_uid)], check=False, capture_output=True)
    time.sleep(0.1)
    subprocess.run(["userdel", "--remove", name], check=False, capture_output=True)
    shutil.rmtree(BASE / "home" / name, ignore_errors=True)
    for leftover in Path("/tmp").glob(f"cowfs-{entry.pw_uid}*"):
        shutil.rmtree(leftover, ignore_errors=True)
