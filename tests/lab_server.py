"""A real `jupyter lab`, started by a test in its own directory and always stopped: its kernels
live in mounts the test must unmount afterwards."""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from servers import free_port

# The notebook the lab tests run: a file written, rewritten, then read with a variable.
LAB_CELLS = [
    "import pathlib\nx = 1\npathlib.Path('data.txt').write_text('one\\n')",
    "x = 2\npathlib.Path('data.txt').write_text('two\\n')",
    "print('state:', x, pathlib.Path('data.txt').read_text().strip())",
]
CHROMIUM = "/usr/bin/chromium"
# What a headless Chromium needs on these machines: no sandbox as root, and no calls home
# (the network is closed, and each refused connection costs time).
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-sync",
                 "--disable-background-networking", "--disable-component-update"]


@dataclass
class LabServer:
    root: Path
    port: int
    token: str
    process: subprocess.Popen

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def api(self, method: str, path: str, body: dict | None = None, token: bool = True) -> tuple[int, dict]:
        """A request to the server's REST API, authenticated by the token unless told not to."""
        request = urllib.request.Request(f"{self.url}/{path.lstrip('/')}", method=method,
                                         data=json.dumps(body).encode() if body is not None else None)
        if token:
            request.add_header("Authorization", f"token {self.token}")
        try:
            with urllib.request.urlopen(request, timeout=60) as reply:
                return reply.status, json.loads(reply.read() or b"{}")
        except urllib.error.HTTPError as error:
            raw = error.read()
            try:
                return error.code, json.loads(raw)
            except ValueError:
                return error.code, {"raw": raw.decode(errors="replace")}

    def stop(self) -> None:
        """Shut down like Ctrl-C does, which stops the kernels too; kill only if it hangs."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def stop_servers_under(directory: Path) -> None:
    """Stop every Jupyter server serving a directory under ``directory``: those the panel
    started in branches run in sessions of their own and outlive the server that started them."""
    marker = f"--ServerApp.root_dir={directory}".encode()
    pids = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if marker in (proc / "cmdline").read_bytes():
                pids.append(int(proc.name))
        except OSError:
            continue
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 30
    while pids and time.monotonic() < deadline:
        pids = [pid for pid in pids if Path(f"/proc/{pid}").exists() and b"Z" not in _state(pid)]
        time.sleep(0.1)
    for pid in pids:
        os.kill(pid, signal.SIGKILL)


def _state(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1][:3]
    except (OSError, IndexError):
        return b"Z"


def write_notebook(path: Path, cells: list[str] = LAB_CELLS) -> None:
    import nbformat
    from nbformat.v4 import new_code_cell, new_notebook

    kernelspec = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}
    nbformat.write(new_notebook(cells=[new_code_cell(source) for source in cells], metadata={"kernelspec": kernelspec}),
                   path)


def start_lab(root: Path, state: Path) -> LabServer:
    """`jupyter lab` serving ``root``, with every Jupyter setting and state file under ``state``
    so nothing of the machine's user leaks in or out."""
    state.mkdir(parents=True, exist_ok=True)
    port, token = free_port(), secrets.token_hex(16)
    env = {**os.environ, "JUPYTER_CONFIG_DIR": str(state / "config"), "JUPYTER_RUNTIME_DIR": str(state / "runtime"),
           "JUPYTERLAB_WORKSPACES_DIR": str(state / "workspaces"), "JUPYTERLAB_SETTINGS_DIR": str(state / "settings")}
    command = [sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root", f"--port={port}",
               "--ip=127.0.0.1", f"--ServerApp.root_dir={root}", f"--IdentityProvider.token={token}",
               "--ServerApp.port_retries=0", "--LabApp.news_url=", "--LabApp.check_for_updates_class="
               "jupyterlab.NeverCheckForUpdate"]
    # No "get notified about Jupyter news?" prompt over the screenshots.
    news = state / "settings" / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings"
    news.parent.mkdir(parents=True, exist_ok=True)
    news.write_text(json.dumps({"fetchNews": "false"}))
    log = open(state / "jupyter.log", "wb")
    process = subprocess.Popen(command, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT,
                               start_new_session=True)
    server = LabServer(root, port, token, process)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"jupyter lab exited: {(state / 'jupyter.log').read_text()[-3000:]}")
        try:
            if server.api("GET", "api/status")[0] == 200:
                return server
        except OSError:
            pass
        time.sleep(0.3)
    server.stop()
    raise AssertionError(f"jupyter lab did not answer in 90 s: {(state / 'jupyter.log').read_text()[-3000:]}")
