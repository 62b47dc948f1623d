"""Running a save's slow part in a forked child, off the cell's path.

``fork()`` gives the child the kernel's heap frozen copy-on-write at this instant (the cost is
copying page tables, ~15 ms for a 2.5 GiB kernel here): the child hashes and writes the
buffers as they were after the cell while the next cell already runs and changes them.

Writes form a chain: each child waits until the one before it has finished (the read end of
a pipe whose write end only that child holds reaches end-of-file when it exits) and starts
from what it learnt (its results file), so the kernel never waits for a write unless the
chain is full. The child touches nothing the kernel shares with it but the files it writes
and the control socket, in a session of its own (killing the kernel's process group lets it
finish): no garbage collection (finalizers of ZeroMQ sockets must not run in
it), no printing (the kernel's stdout is a ZeroMQ stream), SIGINT ignored (an interrupt of
the kernel is not meant for it), and it leaves with ``os._exit``.
"""

from __future__ import annotations

import gc
import json
import os
import select
import signal
import tempfile
import traceback
from dataclasses import dataclass
from typing import Callable


@dataclass
class BackgroundWrite:
    pid: int
    results: str  # where the child leaves its outcome, as JSON
    finished: int  # end-of-file once the child has exited
    label: str  # the snapshot whose variables it writes

    @classmethod
    def start(cls, work: Callable[[dict | None], dict], label: str,
              after: "BackgroundWrite | None") -> "BackgroundWrite":
        """Fork a child that runs ``work(outcome of after, or None)``."""
        fd, results = tempfile.mkstemp(prefix="cowfs-vars-", suffix=".json",
                                       dir=os.environ.get("XDG_RUNTIME_DIR") or None)
        finished, holder = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: never returns
            status = 1
            try:
                gc.disable()
                os.setsid()  # a kill of the kernel's process group must not cut a write short
                signal.signal(signal.SIGINT, signal.SIG_IGN)
                os.close(finished)
                try:
                    outcome = work(after.outcome() if after else None)
                    status = 0
                except BaseException as exc:
                    outcome = {"error": f"{type(exc).__name__}: {exc}"[:300],
                               "trace": traceback.format_exc()[-2000:]}
                os.write(fd, json.dumps(outcome).encode())
            finally:
                os._exit(status)
        os.close(fd)
        os.close(holder)
        return cls(pid, results, finished, label)

    def outcome(self) -> dict:
        """Wait until the child has exited; what ``work`` returned, or ``{"error": ...}``.
        Works from any process that holds ``finished``, a later child as well as the kernel."""
        while os.read(self.finished, 4096):
            pass
        try:
            with open(self.results, "rb") as handle:
                raw = handle.read()
        except FileNotFoundError:
            raw = b""
        if not raw:
            return {"error": f"the process writing the variables of {self.label} ended without a word"}
        return json.loads(raw)

    def exited(self) -> bool:
        return bool(select.select([self.finished], [], [], 0)[0])

    def reap(self) -> None:
        """Release what the kernel holds of a finished child."""
        try:
            os.waitpid(self.pid, 0)
        except ChildProcessError:  # reaped by someone else's SIGCHLD handler
            pass
        os.close(self.finished)
        try:
            os.unlink(self.results)
        except FileNotFoundError:
            pass
