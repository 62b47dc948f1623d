"""The LMDB environment that holds every record of a store (layout: ``cowfs.fs.keys``).

LMDB transactions are the commit points of the store: a change of several records is always
made inside one write transaction, so a crash leaves either all of it or none.

Every commit fdatasyncs its pages before LMDB writes the meta page that points at them
(``metasync=False`` defers only the meta page's own flush to the next commit or ``sync``).
Without that (``sync=False``) the kernel may write a new meta page before the pages it points
at, and a machine crash leaves an index that opens but is garbage: tests/crashfs.py showed it.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Callable, TypeVar

import lmdb

from cowfs.fs.keys import ALL_DBS, OPTIONAL_DBS

T = TypeVar("T")
INITIAL_MAP_SIZE = 1 << 30


def as_os_error(exc: lmdb.Error) -> OSError:
    """LMDB reports disk trouble as its own exceptions without errno; the kernel needs one."""
    text = str(exc)
    for code in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO):
        if os.strerror(code) in text:
            return OSError(code, f"store index: {text}")
    return OSError(errno.EIO, f"store index: {text}")


def lock_file_unwritable(path: Path) -> bool:
    """A store on read-only media (or made read-only) can still be read: nobody can write to it
    either, so readers need no lock table (LMDB's lock=False is safe exactly then)."""
    lock = path / "lock.mdb"
    return not os.access(lock if lock.exists() else path, os.W_OK)


class Reading:
    """A read transaction for a ``with`` block. A plain class, not ``contextlib.contextmanager``:
    the daemon opens one per request, and the generator machinery cost 1.9 µs against 0.4."""

    __slots__ = ("env", "txn")

    def __init__(self, env: lmdb.Environment) -> None:
        self.env = env

    def __enter__(self) -> lmdb.Transaction:
        try:
            self.txn = self.env.begin()
        except lmdb.MapResizedError:  # another process grew the map
            self.env.set_mapsize(0)
            self.txn = self.env.begin()
        return self.txn

    def __exit__(self, *exc_info: object) -> None:
        self.txn.abort()


class Index:
    def __init__(self, path: Path, *, readonly: bool = False) -> None:
        self.path = path
        self.env = lmdb.open(str(path), map_size=INITIAL_MAP_SIZE, max_dbs=len(ALL_DBS) + 2,
                             subdir=True, sync=True, metasync=False, readahead=False, mode=0o600,
                             readonly=readonly, lock=not (readonly and lock_file_unwritable(path)),
                             max_readers=256)
        # The map may already be larger than our initial guess (grown by another process).
        self.env.set_mapsize(0)
        if readonly:
            try:
                self.dbs = {name: self.env.open_db(name, create=False) for name in ALL_DBS
                            if name not in OPTIONAL_DBS or self._has_table(name)}
            except lmdb.NotFoundError as exc:
                missing = [name.decode() for name in ALL_DBS if not self._has_table(name)]
                self.env.close()
                tables = "table" if len(missing) == 1 else "tables"
                raise lmdb.NotFoundError(f"its index has no {', '.join(missing)} {tables}: made by another "
                                         "cowfs version, or not by cowfs; use the cowfs that made it") from exc
        else:
            with self.env.begin(write=True) as txn:
                self.dbs = {name: self.env.open_db(name, txn=txn) for name in ALL_DBS}

    def _has_table(self, name: bytes) -> bool:
        with self.env.begin() as txn:
            return txn.get(name) is not None  # named tables are keys of LMDB's main table

    def db(self, name: bytes):
        return self.dbs[name]

    def reading(self) -> Reading:
        return Reading(self.env)

    def write(self, change: Callable[[lmdb.Transaction], T]) -> T:
        """Run ``change`` in one write transaction, growing the map and retrying when full."""
        while True:
            try:
                with self.env.begin(write=True) as txn:
                    return change(txn)
            except lmdb.MapResizedError:
                self.env.set_mapsize(0)
            except lmdb.MapFullError:
                self.env.set_mapsize(self.env.info()["map_size"] * 2)
            except lmdb.Error as exc:
                raise as_os_error(exc) from exc

    def sync(self) -> None:
        """Make the last commit durable too (its meta page is flushed with the next commit)."""
        try:
            self.env.sync(True)
        except lmdb.Error as exc:
            raise as_os_error(exc) from exc

    def close(self) -> None:
        self.env.close()
