"""One daemon: serves one branch at one mount point, answers its control socket, handles signals.

Shutdown is the same whatever asks for it (``stop`` on the socket, SIGTERM, SIGINT, an external
unmount): push the kernel's dirty pages to us, flush them durably, then leave the FUSE loop.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import pyfuse3
import trio

from cowfs.daemon import control, fuse_reader
from cowfs.daemon.addresses import mount_of
from cowfs.daemon.changes import ChangedPaths
from cowfs.daemon.control import RequestError
from cowfs.daemon.flusher import Flusher
from cowfs.daemon.recompressor import Recompressor
from cowfs.daemon.remote_reads import RemoteReads
from cowfs.fs.records import BranchRecord
from cowfs.fs.store import Store, describe
from cowfs.fs.tree import Tree

log = logging.getLogger(__name__)
MAX_LABEL = 500
MAX_META_BYTES = 64 << 10
READ_AHEAD_KB = 1024


@dataclass
class Daemon:
    store: Store
    branch: BranchRecord
    tree: Tree
    flusher: Flusher
    mountpoint: Path
    socket_path: Path
    changes: ChangedPaths = field(default_factory=ChangedPaths)
    remote_reads: RemoteReads | None = None
    initialized: trio.Event | None = None  # set when the kernel's INIT request was answered
    started: float = field(default_factory=time.time)
    stop_requested: trio.Event = field(default_factory=trio.Event)

    # -- requests ------------------------------------------------------------------------------------
    async def handle(self, request: dict) -> dict:
        op = request["op"]
        if op == "snapshot":
            label = request.get("label") or ""
            meta = request.get("meta") or {}
            if not isinstance(label, str) or len(label) > MAX_LABEL or "\n" in label:
                raise RequestError(f"a label is one line of at most {MAX_LABEL} characters")
            if not isinstance(meta, dict) or len(repr(meta)) > MAX_META_BYTES:
                raise RequestError("meta must be a JSON object of at most 64 KiB")
            record = await self.snapshot(label, meta, bool(request.get("wait")), bool(request.get("lazy")))
            return {"ok": True, "snapshot": describe(record)}
        if op == "status":
            return {"ok": True, **self.status()}
        if op == "flush":
            await self.flusher.flush(durable=True)
            return {"ok": True}
        if op == "list":
            # A reader of the store (`cowfs log`...) asks first, to see every snapshot taken
            # so far: lazy ones are listed only when their batch commits.
            asked = request.get("store")
            if asked is None or os.path.realpath(str(asked)) == os.path.realpath(self.store.path):
                await self.flusher.list_taken_snapshots()
            return {"ok": True}
        if op == "rotate":
            await self.flusher.rotate_pack()
            return {"ok": True}
        if op == "stop":
            self.stop_requested.set()
            return {"ok": True, "pid": os.getpid()}
        raise RequestError(f"unknown op {op!r}; this daemon knows snapshot, status, flush, list, rotate and stop")

    async def push_kernel_pages(self) -> None:
        """With the writeback cache, returned writes may still sit in the kernel: fetch them.

        syncfs makes the kernel send them to us. No thread of this process may make that call
        (or any call on our own mount): if the daemon were killed meanwhile, that thread would
        wait forever for an answer only this process could give, keeping the connection and
        the process alive as a zombie. A child process can be killed with it; socket clients
        do the syncfs themselves before asking for a snapshot."""
        await trio.run_process(["sync", "-f", str(self.mountpoint)], check=False)

    async def snapshot(self, label: str, meta: dict, wait: bool, lazy: bool = False):
        """Snapshot what has reached the daemon; the requester has synced the mount first.

        The reply comes once the snapshot is listed (its batch committed, `Tree.snapshot`),
        once it is durable with ``wait``, and at once when ``lazy``: a cell never waits for
        the disk, and `cowfs snap` returns a snapshot that `cowfs mount` can open whole."""
        # No await between the two: no request can slip between naming the changes and the cut.
        record, batch = self.tree.snapshot(label, {**meta, "changed_paths": self.changes.take()})
        # Unchanged: no batch of its own; the record goes with whatever is taken next.
        sequence = self.flusher.submit(batch) if batch is not None else self.flusher.kick()
        log.debug("snapshot %s of branch %s at epoch %d%s", record.name, self.branch.name, record.epoch,
                  f" ({label})" if label else "")
        if wait:
            await self.flusher.wait_committed(sequence)
            return replace(self.store.snapshot(record.id) or record, durable=True)
        if not lazy:
            await self.flusher.wait_listed(sequence)
            return self.store.snapshot(record.id) or record
        return record

    def status(self) -> dict:
        return {"pid": os.getpid(), "store": str(self.store.path), "branch": self.branch.name,
                "branch_id": self.branch.id, "mountpoint": str(self.mountpoint), "epoch": self.tree.head,
                "dirty_bytes": self.tree.dirty_bytes, "batches_in_flight": len(self.tree.inflight),
                "started": self.started}

    # -- lifetime ------------------------------------------------------------------------------------
    async def raise_read_ahead(self) -> None:
        """FUSE mounts read ahead 128 KiB by default; 1 MiB makes a sequential read's requests
        8x fewer and larger. pyfuse3 has no option for it, so the mount's bdi is set directly
        (root only; harmless if not). The kernel sets it from the INIT reply, so only after that
        reply went out: set earlier, it was silently put back to 128 KiB."""
        if self.initialized is not None:
            await self.initialized.wait()
        entry = mount_of(self.mountpoint)
        if entry is not None and entry.mountpoint == str(self.mountpoint) and entry.fstype.startswith("fuse"):
            try:
                Path(f"/sys/class/bdi/{entry.device}/read_ahead_kb").write_text(str(READ_AHEAD_KB))
            except OSError as exc:
                log.debug("read-ahead left at the default: %s", exc)

    async def watch_signals(self) -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGUSR1) as signals:
            async for signum in signals:
                if signum == signal.SIGUSR1:
                    await self.push_kernel_pages()
                    await self.snapshot("", {"trigger": "SIGUSR1"}, wait=False, lazy=True)
                else:
                    log.info("signal %d: stopping", signum)
                    self.stop_requested.set()

    async def stop_when_asked(self) -> None:
        """Unmount through the kernel while still serving, so dirty pages reach us first; the
        FUSE loop then ends by itself and ``main`` flushes. A busy mount is detached lazily
        and served until its last user lets go."""
        await self.stop_requested.wait()
        await self.flusher.flush(durable=True)
        for command in (["fusermount3", "-u", str(self.mountpoint)],
                        ["fusermount3", "-u", "-z", str(self.mountpoint)]):
            result = await trio.run_process(command, check=False, capture_stderr=True)
            if result.returncode == 0:
                return
            log.warning("%s: %s", " ".join(command), result.stderr.decode(errors="replace").strip())
        fuse_reader.terminate()

    async def run(self, ready_fd: int | None) -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(self.flusher.run)
            nursery.start_soon(self.flusher.run_timer)
            if not self.store.readonly:
                nursery.start_soon(Recompressor(self.flusher, fuse_reader.requests_served).run)
            await nursery.start(control.serve, self.socket_path, self.handle)
            if self.remote_reads is not None:
                await nursery.start(self.remote_reads.run)
            nursery.start_soon(self.watch_signals)
            nursery.start_soon(self.raise_read_ahead)
            nursery.start_soon(self.stop_when_asked)
            if ready_fd is not None:
                os.write(ready_fd, b"ready\n")
                os.close(ready_fd)
            log.info("serving branch %s at %s", self.branch.name, self.mountpoint)
            await pyfuse3.main()
            nursery.cancel_scope.cancel()
