"""A Jupyter server of its own for a branch the panel opened outside what this server serves.

Most people start `jupyter lab` in their workspace; a branch mounted beside it is out of that
server's reach. As the platform cowfs replaces opens a new notebook server at a step, "Open"
then starts `jupyter lab` in the branch: same Python, same address, a port of its own, a fresh
token. It outlives the panel's server (File > Shut Down in its tab stops it) and logs to
Jupyter's runtime directory, so nothing is written into a workspace.
"""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import quote

START_TIMEOUT = 60.0


class ServerStartError(Exception):
    """The branch is mounted but no server could be started in it; the message says what to do."""


def _free_port(ip: str) -> int:
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    with socket.socket(family) as sock:
        sock.bind((ip, 0))
        return sock.getsockname()[1]


def start(directory: Path, notebook: Path, ip: str, browser_host: str, log_dir: Path) -> dict:
    """Start `jupyter lab` serving ``directory``; the URL that opens ``notebook`` (relative to
    it) in a browser that reaches this machine as ``browser_host``."""
    bind = ip or "127.0.0.1"
    port, token = _free_port(bind), secrets.token_hex(24)
    log_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    log_path = log_dir / f"jupyter-{directory.name}-{port}.log"
    command = [sys.executable, "-m", "jupyterlab", "--no-browser", f"--ip={bind}", f"--port={port}",
               "--ServerApp.port_retries=0", f"--ServerApp.root_dir={directory}", f"--IdentityProvider.token={token}"]
    if os.geteuid() == 0:
        command.append("--allow-root")
    env = {key: value for key, value in os.environ.items() if not key.startswith("JPY_")}
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    try:
        process = subprocess.Popen(command, cwd=directory, env=env, stdin=subprocess.DEVNULL, stdout=fd,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    finally:
        os.close(fd)
    local = f"http://{'[' + bind + ']' if ':' in bind else bind}:{port}"
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ServerStartError(f"jupyter lab exited at once in {directory}; see {log_path}")
        try:
            with urllib.request.urlopen(f"{local}/api/status?token={token}", timeout=2):
                break
        except (urllib.error.URLError, OSError):
            time.sleep(0.2)
    else:
        process.terminate()
        raise ServerStartError(f"jupyter lab did not start in {directory} within {START_TIMEOUT:.0f} s; see {log_path}")
    host = browser_host if browser_host else bind
    url = f"http://{host}:{port}/lab/tree/{quote(str(notebook))}?token={token}"
    return {"url": url, "server_pid": process.pid, "server_log": str(log_path)}
