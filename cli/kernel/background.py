"""Running a save's slow part in a forked child, off the cell's path.

``fork()`` gives the child the kernel's heap frozen copy-on-write at this instant (about
7 ms per GiB mapped here, page tables only): the child hashes and writes the buffers as
they were after the cell while the next cell already runs and changes them. The child
touches nothing the kernel shares with it but the files it writes and the control socket:
no garbage collection (finalizers of ZeroMQ sockets must not run in it), no printing (the
kernel's stdout is a ZeroMQ stream), SIGINT ignored (an interrupt of the kernel is not
meant for it), and it leaves with ``os._exit``. What it learnt comes back as JSON in a
private temporary file that the kernel reads when it next needs it.
"""

from __future__ import annotations

import gc
import json
import os
import signal
import tempfile
import traceback
from dataclasses import dataclass
from typing import Callable


@dataclass
class BackgroundWrite:
    pid: int
    results: str

    @classmethod
    def start(cls, work: Callable[[], dict]) -> "BackgroundWrite":
        fd, results = tempfile.mkstemp(prefix="cowfs-vars-", suffix=".json",
                                       dir=os.environ.get("XDG_RUNTIME_DIR") or None)
        pid = os.fork()
        if pid == 0:  # the child: never returns
            status = 1
            try:
                gc.disable()
                signal.signal(signal.SIGINT, signal.SIG_IGN)
                try:
                    outcome = work()
                    status = 0
                except BaseException as exc:
                    outcome = {"error": f"{type(exc).__name__}: {exc}"[:300],
                               "trace": traceback.format_exc()[-2000:]}
                os.write(fd, json.dumps(outcome).encode())
                os.fsync(fd)
            finally:
                os._exit(status)
        os.close(fd)
        return cls(pid, results)

    def wait(self) -> dict:
        """The child's outcome: what ``work`` returned, or ``{"error": ...}``."""
        try:
            _, status = os.waitpid(self.pid, 0)
        except ChildProcessError:  # reaped by someone else's SIGCHLD handler: the file tells
            status = 0
        try:
            with open(self.results, "rb") as handle:
                raw = handle.read()
        finally:
            os.unlink(self.results)
        if raw:
            outcome = json.loads(raw)
            if os.waitstatus_to_exitcode(status) == 0 or "error" in outcome:
                return outcome
        return {"error": f"the process writing variables ended with status {os.waitstatus_to_exitcode(status)}"}
