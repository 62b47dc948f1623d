"""The pyfuse3 operations: a thin translation of FUSE requests into ``cowfs.fs.tree`` calls.

Everything that decides what the filesystem contains lives in the engine; this layer keeps
only what the kernel protocol needs: lookup counts, open directory listings, and the
conversion of engine records and errors into pyfuse3's types.
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import stat
from collections import Counter
from typing import Any, Awaitable, Callable, TypeVar

import pyfuse3
import trio

from cowfs.daemon.changes import ChangedPaths
from cowfs.daemon.flusher import Flusher
from cowfs.daemon.remote_reads import RemoteReads
from cowfs.fs.errors import CorruptChunkError, FsError, RemoteChunkNeeded
from cowfs.fs.listing import DirListing
from cowfs.fs.records import InodeAttrs
from cowfs.fs.tree import BLOCK_SIZE, Tree

log = logging.getLogger(__name__)
F = TypeVar("F", bound=Callable[..., Awaitable[Any]])

# Only this daemon changes this tree, so the kernel may trust what it was told for long.
ENTRY_TIMEOUT = 300.0
ATTR_TIMEOUT = 300.0
DIRECTORY_SIZE = 4096
REMOTE_RETRIES = 4  # fetches one request may wait for (each brings a window of blocks)
SPARSE_CHECK_MIN = 1 << 20  # smaller files are reported dense: their st_blocks costs no scan


def translate_errors(handler: F) -> F:
    """Engine errors become the errno the caller sees; anything else is logged and is EIO.

    A request that needs a chunk of a lazily mounted remote snapshot waits for it and runs
    again (every handler can: what it changed before it met the chunk, it changes the same way
    the second time)."""

    @functools.wraps(handler)
    async def wrapped(*args: Any, **kwargs: Any) -> Any:
        for _ in range(REMOTE_RETRIES):
            try:
                return await handler(*args, **kwargs)
            except RemoteChunkNeeded as needed:  # a lazily mounted file: fetch, then ask again
                await args[0].remote_reads.fetch(needed, handler.__name__)
            except pyfuse3.FUSEError:
                raise
            except CorruptChunkError as exc:
                operations = args[0]
                where = operations.describe_inode(args[1]) if len(args) > 1 and isinstance(args[1], int) else ""
                message = f"I/O error in {handler.__name__}{where}: {exc}; run `cowfs fsck` on this store"
                log.error(message)
                operations.tree.store.flag_damage(message)
                raise pyfuse3.FUSEError(errno.EIO) from exc
            except OSError as exc:
                raise pyfuse3.FUSEError(exc.errno or errno.EIO) from exc
            except Exception:
                log.exception("unexpected error in %s", handler.__name__)
                raise pyfuse3.FUSEError(errno.EIO)
        log.error("I/O error in %s: chunks kept leaving the remote cache before they could be read; "
                  "mount with a larger --cache-size", handler.__name__)
        raise pyfuse3.FUSEError(errno.EIO)

    return wrapped  # type: ignore[return-value]


def entry_attributes(ino: int, attrs: InodeAttrs, stored_blocks: int | None = None) -> pyfuse3.EntryAttributes:
    """The kernel's view of an inode; ``stored_blocks`` (of a sparse-capable large file) makes
    ``st_blocks`` count only the blocks that hold data."""
    entry = pyfuse3.EntryAttributes()
    entry.st_ino = ino
    entry.generation = 0
    entry.entry_timeout = ENTRY_TIMEOUT
    entry.attr_timeout = ATTR_TIMEOUT
    entry.st_mode = attrs.mode
    entry.st_nlink = attrs.nlink
    entry.st_uid = attrs.uid
    entry.st_gid = attrs.gid
    entry.st_rdev = attrs.rdev
    entry.st_size = DIRECTORY_SIZE if attrs.is_dir else attrs.size  # as ext4 shows a small directory
    entry.st_blksize = BLOCK_SIZE
    entry.st_blocks = -(-entry.st_size // 512)
    if stored_blocks is not None:
        entry.st_blocks = min(entry.st_blocks, stored_blocks * (BLOCK_SIZE // 512))
    entry.st_atime_ns = attrs.atime_ns
    entry.st_mtime_ns = attrs.mtime_ns
    entry.st_ctime_ns = attrs.ctime_ns
    return entry


def missing_entry() -> pyfuse3.EntryAttributes:
    """A lookup answer that tells the kernel to remember that the name does not exist."""
    entry = pyfuse3.EntryAttributes()
    entry.st_ino = 0
    entry.entry_timeout = ENTRY_TIMEOUT
    return entry


class CowOperations(pyfuse3.Operations):
    enable_writeback_cache = True

    def __init__(self, tree: Tree, flusher: Flusher, *, xattrs: bool = False) -> None:
        super().__init__()
        self.tree = tree
        tree.kernel_stamps_writes = self.enable_writeback_cache
        self.flusher = flusher
        # Serving getxattr at all costs a round trip per write() call: the kernel asks for
        # security.capability before each one (FUSE never marks inodes S_NOSEC). Answering
        # ENOSYS once makes the kernel stop asking, and every xattr call then says ENOTSUP.
        self.xattrs = xattrs
        self.lookups: Counter[int] = Counter()
        self.nameless: set[int] = set()  # no names left, still held by the kernel (open files)
        self._open_dirs: dict[int, tuple[int, DirListing | None]] = {}
        # The name of each inode the kernel holds (the engine keeps no parent links): for the
        # ".." a listing shows, and to name what changed for the next snapshot.
        self.changes = ChangedPaths()
        # st_blocks of large files, kept up to date by writes (a scan per reply after every write
        # was 30% of the daemon's time in random writes to a 1 GiB file); truncation drops it.
        self._stored_blocks: dict[int, int] = {}
        self._next_dir_handle = 1
        self.remote_reads = RemoteReads(tree)
        self.initialized = trio.Event()

    def init(self) -> None:
        """pyfuse3 calls this while answering the kernel's INIT; the reply goes out before any
        task waiting on ``initialized`` runs."""
        self.initialized.set()

    # -- helpers -----------------------------------------------------------------------------------
    def _require_xattrs(self) -> None:
        if not self.xattrs:
            raise pyfuse3.FUSEError(errno.ENOSYS)

    def describe_inode(self, ino: int) -> str:
        """For error reports: which file (path found by a walk, only when something failed)."""
        path = next((p for p, child, _ in self.tree.walk() if child == ino), None)
        shown = path.decode(errors="replace") if path else f"inode {ino}"
        return f" of {shown} on branch {self.tree.branch_id} (epoch {self.tree.head})"

    def _attributes(self, ino: int, attrs: InodeAttrs) -> pyfuse3.EntryAttributes:
        stored = None
        if attrs.is_reg and attrs.size > SPARSE_CHECK_MIN:
            stored = self._stored_blocks.get(ino)
            if stored is None:
                stored = self._stored_blocks[ino] = self.tree.stored_blocks(ino)
        return entry_attributes(ino, attrs, stored)

    def _known(self, ino: int, attrs: InodeAttrs, parent: int, name: bytes) -> pyfuse3.EntryAttributes:
        """Reply with an entry the kernel will now hold a reference to."""
        self.lookups[ino] += 1
        self.changes.named(ino, parent, name)
        return self._attributes(ino, attrs)

    def _parent_of(self, directory: int) -> int:
        return self.changes.names.get(directory, (directory,))[0]

    def _changed(self, ino: int, attrs: InodeAttrs | None = None) -> None:
        if ino not in self.changes.seen:
            self.changes.inode_changed(ino, (attrs or self.tree.getattr(ino)).nlink)

    def _lost_a_name(self, ino: int, attrs: InodeAttrs) -> None:
        """An inode with no names and no kernel references is gone for good (its history stays);
        one the kernel still holds (an open file) goes when the kernel forgets it."""
        if attrs.nlink > 0:
            return
        if self.lookups[ino] > 0:
            self.nameless.add(ino)
        else:
            self.tree.delete_inode(ino)

    # -- lookups and attributes ---------------------------------------------------------------------
    @translate_errors
    async def lookup(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        try:
            ino, attrs = self.tree.lookup(parent_inode, name)
        except FsError as exc:
            if exc.errno != errno.ENOENT:
                raise
            # `import` and git probe many names that do not exist; a plain ENOENT is not cached,
            # so each probe would come back here. Every change to this branch passes through this
            # mount's kernel, which replaces the negative entry when the name is created.
            return missing_entry()
        return self._known(ino, attrs, parent_inode, name)

    @translate_errors
    async def forget(self, inode_list) -> None:
        for ino, count in inode_list:
            self.lookups[ino] -= count
            if self.lookups[ino] <= 0:
                del self.lookups[ino]
                self._stored_blocks.pop(ino, None)
                self.remote_reads.forget(ino)
                self.changes.forgotten(ino)
                if ino in self.nameless:  # forgetting any other inode needs no look at the store
                    self.nameless.discard(ino)
                    self.tree.delete_inode(ino)

    @translate_errors
    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext | None = None) -> pyfuse3.EntryAttributes:
        return self._attributes(inode, self.tree.getattr(inode))

    @translate_errors
    async def setattr(self, inode: int, attr: pyfuse3.EntryAttributes, fields: pyfuse3.SetattrFields,
                      fh: int | None, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        attrs = self.tree.setattr(
            inode,
            mode=attr.st_mode if fields.update_mode else None,
            uid=attr.st_uid if fields.update_uid else None,
            gid=attr.st_gid if fields.update_gid else None,
            size=attr.st_size if fields.update_size else None,
            atime_ns=attr.st_atime_ns if fields.update_atime else None,
            mtime_ns=attr.st_mtime_ns if fields.update_mtime else None,
            ctime_ns=attr.st_ctime_ns if fields.update_ctime else None,
        )
        if fields.update_size:
            self._stored_blocks.pop(inode, None)
        if fields.update_size or fields.update_mode or fields.update_uid or fields.update_gid:
            self._changed(inode, attrs)  # times alone: the kernel's hand-over after writes seen already
        return self._attributes(inode, attrs)

    @translate_errors
    async def readlink(self, inode: int, ctx: pyfuse3.RequestContext) -> bytes:
        return self.tree.readlink(inode)

    # -- creating and removing names ----------------------------------------------------------------
    async def _create(self, parent: int, name: bytes, mode: int, ctx: pyfuse3.RequestContext,
                      rdev: int = 0, target: bytes = b"") -> tuple[int, pyfuse3.EntryAttributes]:
        ino, attrs = self.tree.create(parent, name, mode, ctx.uid, ctx.gid, rdev, target)
        self.changes.entry_changed(parent, name)
        return ino, self._known(ino, attrs, parent, name)

    @translate_errors
    async def mknod(self, parent_inode: int, name: bytes, mode: int, rdev: int,
                    ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        return (await self._create(parent_inode, name, mode, ctx, rdev))[1]

    @translate_errors
    async def mkdir(self, parent_inode: int, name: bytes, mode: int,
                    ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        return (await self._create(parent_inode, name, stat.S_IFDIR | stat.S_IMODE(mode), ctx))[1]

    @translate_errors
    async def symlink(self, parent_inode: int, name: bytes, target: bytes,
                      ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        return (await self._create(parent_inode, name, stat.S_IFLNK | 0o777, ctx, target=target))[1]

    @translate_errors
    async def create(self, parent_inode: int, name: bytes, mode: int, flags: int,
                     ctx: pyfuse3.RequestContext) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        ino, entry = await self._create(parent_inode, name, stat.S_IFREG | stat.S_IMODE(mode), ctx)
        return pyfuse3.FileInfo(fh=ino, keep_cache=True), entry

    @translate_errors
    async def link(self, inode: int, new_parent_inode: int, new_name: bytes,
                   ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        attrs = self.tree.link(inode, new_parent_inode, new_name)
        self.changes.entry_changed(new_parent_inode, new_name)
        self._changed(inode, attrs)  # now with several names: the epoch cannot name all changes
        return self._known(inode, attrs, new_parent_inode, new_name)

    @translate_errors
    async def unlink(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        self._lost_a_name(*self.tree.unlink(parent_inode, name))
        self.changes.entry_changed(parent_inode, name)

    @translate_errors
    async def rmdir(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        self._lost_a_name(*self.tree.unlink(parent_inode, name, directory=True))
        self.changes.entry_changed(parent_inode, name)

    @translate_errors
    async def rename(self, parent_inode_old: int, name_old: bytes, parent_inode_new: int, name_new: bytes,
                     flags: int, ctx: pyfuse3.RequestContext) -> None:
        for parent, name in ((parent_inode_old, name_old), (parent_inode_new, name_new)):
            self.changes.entry_changed(parent, name)  # named before the move changes the names
        replaced = self.tree.rename(parent_inode_old, name_old, parent_inode_new, name_new, flags)
        if replaced is not None:
            self._lost_a_name(*replaced)
        for parent, name in ((parent_inode_new, name_new), (parent_inode_old, name_old)):
            try:
                moved, _ = self.tree.lookup(parent, name)
            except FsError:
                continue  # the old name is gone unless the two were exchanged
            if moved in self.changes.names:
                self.changes.named(moved, parent, name)

    # -- file data -----------------------------------------------------------------------------------
    @translate_errors
    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        attrs = self.tree.getattr(inode)
        if attrs.is_dir:
            raise pyfuse3.FUSEError(errno.EISDIR)
        if self.tree.readonly and flags & (os.O_WRONLY | os.O_RDWR | os.O_TRUNC):
            raise pyfuse3.FUSEError(errno.EROFS)
        if flags & os.O_TRUNC and attrs.size:
            # libfuse asks the kernel for atomic O_TRUNC: the truncation is ours to do, here.
            self.tree.setattr(inode, size=0)
            self._stored_blocks.pop(inode, None)
            self._changed(inode, attrs)
        # Nothing but this daemon changes the tree, so cached pages stay valid across opens.
        return pyfuse3.FileInfo(fh=inode, keep_cache=True)

    @translate_errors
    async def read(self, fh: int, off: int, size: int) -> bytes:
        data = self.tree.read(fh, off, size)
        self.remote_reads.after_read(fh, off + len(data))
        return data

    @translate_errors
    async def write(self, fh: int, off: int, buf: bytes) -> int:
        holes = self.tree.holes_among(fh, off, len(buf)) if fh in self._stored_blocks else 0
        self._changed(fh)
        written = self.tree.write(fh, off, buf)
        if holes and fh in self._stored_blocks:
            self._stored_blocks[fh] += holes
        await self.flusher.throttle()
        return written

    async def flush(self, fh: int) -> None:
        # With the writeback cache the kernel writes dirty pages back before it would send FLUSH,
        # and cowfs has nothing more to do at close(): ENOSYS once, and no FLUSH ever again.
        raise pyfuse3.FUSEError(errno.ENOSYS)

    async def release(self, fh: int) -> None:
        return None

    @translate_errors
    async def fsync(self, fh: int, datasync: bool) -> None:
        await self.flusher.flush(durable=True)

    # -- directories ---------------------------------------------------------------------------------
    @translate_errors
    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        if not self.tree.getattr(inode).is_dir:  # ENOTDIR / ENOENT now, not at the first readdir
            raise FsError(errno.ENOTDIR)
        handle = self._next_dir_handle
        self._next_dir_handle += 1
        self._open_dirs[handle] = (inode, None)
        return handle

    @translate_errors
    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        # The listing is taken when reading starts (and again on rewind), so entries that stay
        # are seen exactly once while others come and go (POSIX leaves those two open). A new
        # descriptor may start anywhere: NFS re-export opens afresh and seeks to a cookie.
        # Cookies are positions in the (name-ordered) listing, "." and ".." first.
        inode, listing = self._open_dirs[fh]
        if start_id == 0 or listing is None:
            listing = self.tree.listing(inode)
            self._open_dirs[fh] = (inode, listing)
        for position in range(start_id, len(listing) + 2):
            if position < 2:
                name, child = b"." * (position + 1), inode if position == 0 else self._parent_of(inode)
            else:
                name, child = listing[position - 2]
            try:
                attrs = self.tree.getattr(child)
            except OSError:
                continue  # removed since the listing was taken
            if not pyfuse3.readdir_reply(token, name, self._attributes(child, attrs), position + 1):
                return
            if position >= 2:  # the kernel takes no reference for "." and ".."
                self.lookups[child] += 1
                self.changes.named(child, inode, name)

    async def releasedir(self, fh: int) -> None:
        self._open_dirs.pop(fh, None)

    @translate_errors
    async def fsyncdir(self, fh: int, datasync: bool) -> None:
        await self.flusher.flush(durable=True)

    # -- extended attributes -------------------------------------------------------------------------
    @translate_errors
    async def getxattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> bytes:
        self._require_xattrs()
        return self.tree.getxattr(inode, name)

    @translate_errors
    async def listxattr(self, inode: int, ctx: pyfuse3.RequestContext) -> list[bytes]:
        self._require_xattrs()
        return self.tree.listxattr(inode)

    @translate_errors
    async def setxattr(self, inode: int, name: bytes, value: bytes, ctx: pyfuse3.RequestContext) -> None:
        self._require_xattrs()
        self.tree.setxattr(inode, name, value)
        self._changed(inode)

    @translate_errors
    async def removexattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        self._require_xattrs()
        self.tree.setxattr(inode, name, None)
        self._changed(inode)

    # -- the filesystem as a whole -------------------------------------------------------------------
    @translate_errors
    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        """Space is the store's disk; the workspace has no inode limit of its own."""
        disk = os.statvfs(self.tree.store.path)
        data = pyfuse3.StatvfsData()
        data.f_bsize = disk.f_bsize
        data.f_frsize = disk.f_frsize
        data.f_blocks = disk.f_blocks
        data.f_bfree = disk.f_bfree
        data.f_bavail = disk.f_bavail
        data.f_files = 2**32
        data.f_ffree = 2**32 - 1
        data.f_favail = 2**32 - 1
        data.f_namemax = 255
        return data
