"""``python -m cowfs.daemon``: what ``cowfs mount`` starts for each mount point."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

import pyfuse3
import trio

from cowfs.daemon import fuse_reader
from cowfs.daemon.addresses import AddressError, control_socket_path, mounts
from cowfs.daemon.flusher import Flusher
from cowfs.daemon.memory import keep_freed_memory
from cowfs.daemon.operations import CowOperations
from cowfs.daemon.service import Daemon
from cowfs.fs.errors import StoreError
from cowfs.fs.store import Store, open_private
from cowfs.fs.tree import Tree

log = logging.getLogger("cowfs.daemon")


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="cowfs-daemon")
    parser.add_argument("--store", required=True)
    parser.add_argument("--branch", required=True)
    parser.add_argument("--ready-fd", type=int)
    parser.add_argument("--allow-other", action="store_true")
    parser.add_argument("--xattrs", action="store_true")
    parser.add_argument("--foreground", action="store_true")
    parser.add_argument("--debug", action="store_true")
    parser.add_argument("--remote-cache-size", type=int, help="bytes the chunks of remote snapshots may take")
    parser.add_argument("mountpoint")
    return parser.parse_args(argv)


def setup_logging(store: Path, branch: str, foreground: bool, debug: bool) -> None:
    if "/" in branch or branch.startswith("."):  # made before names were checked: never a path
        raise StoreError(f"branch name {branch!r} cannot name a log file; mount a snapshot of it as a new branch")
    log_file = open(open_private(store / "logs" / f"{branch}.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND),
                    "a", encoding="utf-8")
    handlers: list[logging.Handler] = [logging.StreamHandler(log_file)]
    if foreground:
        handlers.append(logging.StreamHandler(sys.stderr))
    logging.basicConfig(level=logging.DEBUG if debug else logging.INFO, handlers=handlers,
                        format="%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s")
    # The AWS SDK's own logging (lazy mounts) can show request headers at debug level: keep it
    # to warnings, so no credential or signature ever reaches a log.
    for name in ("boto3", "botocore", "urllib3", "s3transfer"):
        logging.getLogger(name).setLevel(logging.WARNING)


def check_mountpoint(mountpoint: Path) -> None:
    if not mountpoint.is_dir():
        raise StoreError(f"mount point {mountpoint} does not exist or is not a directory; create it first")
    if any(entry.mountpoint == str(mountpoint) for entry in mounts()):
        raise StoreError(f"{mountpoint} is already a mount point; unmount it first or choose another")
    if any(mountpoint.iterdir()):
        raise StoreError(f"mount point {mountpoint} is not empty; cowfs mounts only on an empty directory")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    # Worker threads hash and compress with the GIL released, but need it back between blocks;
    # a shorter switch interval stops them queueing behind the FUSE thread (2x on bench/run.py A).
    sys.setswitchinterval(0.001)
    keep_freed_memory()
    mountpoint = Path(os.path.realpath(args.mountpoint))
    ready_fd = args.ready_fd
    try:
        store = Store.open(Path(args.store))
        if args.remote_cache_size:
            store.remote_cache_limit = args.remote_cache_size
        branch = store.branch_named(args.branch)
        setup_logging(store.path, branch.name, args.foreground, args.debug)
        check_mountpoint(mountpoint)
        lock_fd = store.lock_branch(branch, f"pid {os.getpid()} at {mountpoint}")
        tree = Tree(store, branch.id)
        swept = tree.sweep_orphans()
        if swept:
            tree.flush()
            log.info("deleted %d files that a previous daemon left open and nameless", swept)
        tree.reserve_snapshot_ids()
        flusher = Flusher(tree)
        operations = CowOperations(tree, flusher, xattrs=args.xattrs or tree.has_xattrs())
        # Everything that looks at the mount point happens before the mount: once mounted,
        # touching it from this thread would wait on our own FUSE loop, which is not running yet.
        socket_path = control_socket_path(mountpoint)
        options = set(pyfuse3.default_options) | {"fsname=cowfs", "subtype=cowfs"}
        if args.allow_other:
            options.add("allow_other")
        pyfuse3.init(operations, str(mountpoint), options)
        fuse_reader.install()
    except (StoreError, AddressError, OSError, RuntimeError) as exc:
        message = str(exc) or repr(exc)
        if ready_fd is not None:
            os.write(ready_fd, f"error: {message}\n".encode())
        print(f"cowfs: {message}", file=sys.stderr)
        return 1
    daemon = Daemon(store, branch, tree, flusher, mountpoint, socket_path, operations.changes,
                    operations.remote_reads, operations.initialized)
    clean = False
    try:
        trio.run(daemon.run, ready_fd)
        clean = True
    finally:
        # Whatever ended the loop, nothing acknowledged may stay only in memory.
        try:
            tree.flush()
            tree.give_back_snapshot_ids()
            store.sync()
        finally:
            pyfuse3.close(unmount=True)
            store.close()
            os.close(lock_fd)
            log.info("stopped %s", "cleanly" if clean else "after an error")
    return 0


if __name__ == "__main__":
    sys.exit(main())
