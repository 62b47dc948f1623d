"""Real servers the tests and benches start on 127.0.0.1 and always stop."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from typing import Iterator


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def s3_server() -> Iterator[str]:
    """moto's S3 API server, in a process of its own over HTTP; yields its endpoint URL."""
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(url + "/moto-api/", timeout=1)
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError("the S3 server did not start")
                time.sleep(0.1)
        yield url
    finally:
        server.terminate()
        server.wait(timeout=10)


class CuttingProxy:
    """A TCP forwarder to a server on 127.0.0.1 that can be made to "go away": once ``cut_after``
    bytes have gone through (either way), every connection is dropped and new ones are closed at
    once, until ``restore``. What a client sees when the server dies in the middle of a request.
    ``hold`` keeps whatever arrives from going on until ``release``: a server that hangs."""

    def __init__(self, target_port: int) -> None:
        import threading

        self.target_port = target_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.budget: int | None = None
        self.lock = threading.Lock()
        self.open: list[socket.socket] = []
        self.closing = False
        self.flowing = threading.Event()
        self.flowing.set()
        self.stalled = threading.Event()  # something arrived while held
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def cut_after(self, count: int) -> None:
        self.budget = count

    def restore(self) -> None:
        self.budget = None

    def hold(self) -> None:
        self.flowing.clear()

    def release(self) -> None:
        self.flowing.set()

    @property
    def down(self) -> bool:
        return self.budget is not None and self.budget <= 0

    def close(self) -> None:
        self.closing = True
        self.flowing.set()
        self.listener.close()
        self._drop_all()

    def _drop_all(self) -> None:
        with self.lock:
            for sock in self.open:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                sock.close()
            self.open.clear()

    def _accept(self) -> None:
        import threading

        while not self.closing:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if self.down:
                client.close()
                continue
            server = socket.create_connection(("127.0.0.1", self.target_port))
            with self.lock:
                self.open += [client, server]
            threading.Thread(target=self._pump, args=(client, server), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                if not self.flowing.is_set():
                    self.stalled.set()
                    self.flowing.wait()
                if self.budget is not None:
                    self.budget -= len(data)
                    if self.budget <= 0:
                        self._drop_all()
                        return
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
