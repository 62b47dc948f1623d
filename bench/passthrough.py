"""A minimal pyfuse3 passthrough filesystem: the ceiling for any Python FUSE design.

It forwards each request to the same system call on a backing directory and keeps nothing
but an inode -> path table. The kernel writeback cache is on, as in cowfs, so the two are
compared on equal terms. Usage: python bench/passthrough.py BACKING_DIR MOUNTPOINT
"""

from __future__ import annotations

import os
import sys
from collections import defaultdict

import pyfuse3
import trio

TIMEOUT = 300.0


class Passthrough(pyfuse3.Operations):
    enable_writeback_cache = True

    def __init__(self, root: str) -> None:
        super().__init__()
        self.paths: dict[int, str] = {pyfuse3.ROOT_INODE: root}
        self.lookups: defaultdict[int, int] = defaultdict(int)
        self.fds: dict[int, int] = {}
        self.opens: defaultdict[int, int] = defaultdict(int)

    def _path(self, inode: int) -> str:
        return self.paths[inode]

    def _entry(self, path: str) -> pyfuse3.EntryAttributes:
        try:
            st = os.lstat(path)
        except OSError as exc:
            raise pyfuse3.FUSEError(exc.errno) from None
        entry = pyfuse3.EntryAttributes()
        for attr in ("st_mode", "st_nlink", "st_uid", "st_gid", "st_rdev", "st_size", "st_atime_ns",
                     "st_mtime_ns", "st_ctime_ns"):
            setattr(entry, attr, getattr(st, attr))
        entry.st_ino = st.st_ino
        entry.st_blksize, entry.st_blocks = 4096, st.st_blocks
        entry.entry_timeout = entry.attr_timeout = TIMEOUT
        if entry.st_ino not in self.paths or self.paths[entry.st_ino] != path:
            self.paths[entry.st_ino] = path
        return entry

    def _known(self, path: str) -> pyfuse3.EntryAttributes:
        entry = self._entry(path)
        self.lookups[entry.st_ino] += 1
        return entry

    async def lookup(self, parent_inode, name, ctx):
        return self._known(os.path.join(self._path(parent_inode), os.fsdecode(name)))

    async def forget(self, inode_list):
        for inode, count in inode_list:
            self.lookups[inode] -= count
            if self.lookups[inode] <= 0:
                self.lookups.pop(inode, None)
                if inode != pyfuse3.ROOT_INODE:
                    self.paths.pop(inode, None)

    async def getattr(self, inode, ctx=None):
        return self._entry(self._path(inode))

    async def setattr(self, inode, attr, fields, fh, ctx):
        path = self._path(inode)
        try:
            if fields.update_size:
                os.truncate(path, attr.st_size)
            if fields.update_mode:
                os.chmod(path, attr.st_mode & 0o7777)
            if fields.update_atime or fields.update_mtime:
                st = os.lstat(path)
                os.utime(path, ns=(attr.st_atime_ns if fields.update_atime else st.st_atime_ns,
                                   attr.st_mtime_ns if fields.update_mtime else st.st_mtime_ns))
        except OSError as exc:
            raise pyfuse3.FUSEError(exc.errno) from None
        return self._entry(path)

    async def opendir(self, inode, ctx):
        return inode

    async def readdir(self, fh, start_id, token):
        path = self._path(fh)
        names = sorted(os.listdir(path))
        for index in range(start_id, len(names)):
            child = os.path.join(path, names[index])
            if not pyfuse3.readdir_reply(token, os.fsencode(names[index]), self._entry(child), index + 1):
                return
            self.lookups[os.lstat(child).st_ino] += 1

    async def mkdir(self, parent_inode, name, mode, ctx):
        path = os.path.join(self._path(parent_inode), os.fsdecode(name))
        os.mkdir(path, mode)
        return self._known(path)

    async def symlink(self, parent_inode, name, target, ctx):
        path = os.path.join(self._path(parent_inode), os.fsdecode(name))
        os.symlink(target, path)
        return self._known(path)

    async def readlink(self, inode, ctx):
        return os.fsencode(os.readlink(self._path(inode)))

    async def link(self, inode, new_parent_inode, new_name, ctx):
        path = os.path.join(self._path(new_parent_inode), os.fsdecode(new_name))
        os.link(self._path(inode), path)
        return self._known(path)

    async def unlink(self, parent_inode, name, ctx):
        try:
            os.unlink(os.path.join(self._path(parent_inode), os.fsdecode(name)))
        except OSError as exc:
            raise pyfuse3.FUSEError(exc.errno) from None

    async def rmdir(self, parent_inode, name, ctx):
        try:
            os.rmdir(os.path.join(self._path(parent_inode), os.fsdecode(name)))
        except OSError as exc:
            raise pyfuse3.FUSEError(exc.errno) from None

    async def rename(self, parent_inode_old, name_old, parent_inode_new, name_new, flags, ctx):
        old = os.path.join(self._path(parent_inode_old), os.fsdecode(name_old))
        new = os.path.join(self._path(parent_inode_new), os.fsdecode(name_new))
        os.rename(old, new)
        self.paths[os.lstat(new).st_ino] = new

    async def open(self, inode, flags, ctx):
        if inode not in self.fds:
            self.fds[inode] = os.open(self._path(inode), os.O_RDWR)
        self.opens[inode] += 1
        return pyfuse3.FileInfo(fh=inode, keep_cache=True)

    async def create(self, parent_inode, name, mode, flags, ctx):
        path = os.path.join(self._path(parent_inode), os.fsdecode(name))
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, mode)
        entry = self._known(path)
        self.fds[entry.st_ino] = fd
        self.opens[entry.st_ino] += 1
        return pyfuse3.FileInfo(fh=entry.st_ino, keep_cache=True), entry

    async def read(self, fh, off, size):
        return os.pread(self.fds[fh], size, off)

    async def write(self, fh, off, buf):
        return os.pwrite(self.fds[fh], buf, off)

    async def release(self, fh):
        self.opens[fh] -= 1
        if self.opens[fh] <= 0:
            self.opens.pop(fh, None)
            os.close(self.fds.pop(fh))

    async def fsync(self, fh, datasync):
        if fh in self.fds:
            os.fsync(self.fds[fh])

    async def statfs(self, ctx):
        st = os.statvfs(self._path(pyfuse3.ROOT_INODE))
        data = pyfuse3.StatvfsData()
        for attr in ("f_bsize", "f_frsize", "f_blocks", "f_bfree", "f_bavail", "f_files", "f_ffree",
                     "f_favail", "f_namemax"):
            setattr(data, attr, getattr(st, attr))
        return data


def main() -> None:
    backing, mountpoint = sys.argv[1], sys.argv[2]
    pyfuse3.init(Passthrough(os.path.abspath(backing)), mountpoint,
                 set(pyfuse3.default_options) | {"fsname=passthrough", "subtype=passthrough"})
    try:
        trio.run(pyfuse3.main)
    finally:
        pyfuse3.close(unmount=True)


if __name__ == "__main__":
    main()
