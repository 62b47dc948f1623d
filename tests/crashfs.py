"""A filesystem that forgets what was never fsynced: a machine crash, simulated.

It passes every request through to a backing directory, except file data: writes stay in
memory, page by page, until the file is fsynced. On SIGUSR1 it "crashes": a random subset of
the unsynced pages reaches the backing files (the kernel may have written any of them back
before the power went), files created since their directory was last fsynced may or may not
survive, and everything else is lost. Then it exits and unmounts. The store that cowfs kept
on this mount is left in the backing directory exactly as a real disk could be after the crash.

    python tests/crashfs.py BACKING_DIR MOUNTPOINT SEED

A truncate makes the file's earlier writes durable first (a simplification: it only makes
the simulation kinder around truncates, which cowfs makes only to cut a torn pack record).
Namespace changes other than creates (mkdir, unlink, rename) are durable at once.
"""

from __future__ import annotations

import os
import random
import signal
import sys
from pathlib import Path

import pyfuse3
import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

from passthrough import Passthrough  # noqa: E402

PAGE = 4096


class CrashFS(Passthrough):
    enable_writeback_cache = False  # every write reaches us, in order, as it happens

    def __init__(self, root: str, seed: int) -> None:
        super().__init__(root)
        self.rng = random.Random(seed)
        self.pending: dict[int, dict[int, bytes]] = {}  # inode -> page number -> unsynced contents
        self.sizes: dict[int, int] = {}  # inode -> size including unsynced writes
        self.new_files: dict[str, int] = {}  # path -> inode, created since its directory's fsync

    # -- what the files look like, unsynced writes included --------------------------------------
    def _entry(self, path: str) -> pyfuse3.EntryAttributes:
        entry = super()._entry(path)
        if entry.st_ino in self.sizes:
            entry.st_size = self.sizes[entry.st_ino]
        return entry

    def _fd(self, inode: int) -> int:
        if inode not in self.fds:
            self.fds[inode] = os.open(self._path(inode), os.O_RDWR)
        return self.fds[inode]

    def _size(self, inode: int) -> int:
        return self.sizes[inode] if inode in self.sizes else os.fstat(self._fd(inode)).st_size

    def _page(self, inode: int, number: int) -> bytes:
        page = self.pending.get(inode, {}).get(number)
        if page is None:
            page = os.pread(self._fd(inode), PAGE, number * PAGE).ljust(PAGE, b"\0")
        return page

    async def read(self, fh, off, size):
        end = min(off + size, self._size(fh))
        if end <= off:
            return b""
        first, last = off // PAGE, (end - 1) // PAGE
        data = b"".join(self._page(fh, number) for number in range(first, last + 1))
        return data[off - first * PAGE:end - first * PAGE]

    async def write(self, fh, off, buf):
        pages = self.pending.setdefault(fh, {})
        size = self._size(fh)
        position = 0
        while position < len(buf):
            number, start = divmod(off + position, PAGE)
            take = min(PAGE - start, len(buf) - position)
            page = bytearray(self._page(fh, number))
            page[start:start + take] = buf[position:position + take]
            pages[number] = bytes(page)
            position += take
        self.sizes[fh] = max(size, off + len(buf))
        return len(buf)

    async def setattr(self, inode, attr, fields, fh, ctx):
        if fields.update_size:
            self._make_durable(inode)
        return await super().setattr(inode, attr, fields, fh, ctx)

    async def release(self, fh):
        pass  # descriptors stay open: unsynced pages are read back through them

    async def create(self, parent_inode, name, mode, flags, ctx):
        info, entry = await super().create(parent_inode, name, mode, flags, ctx)
        self.new_files[self._path(entry.st_ino)] = entry.st_ino
        return info, entry

    # -- durability --------------------------------------------------------------------------------
    def _make_durable(self, inode: int) -> None:
        pages = self.pending.pop(inode, {})
        size = self.sizes.pop(inode, None)
        fd = self._fd(inode)
        for number, page in sorted(pages.items()):
            os.pwrite(fd, page[:max(0, size - number * PAGE)] if size is not None else page, number * PAGE)
        if size is not None:
            os.ftruncate(fd, size)
        os.fsync(fd)

    async def fsync(self, fh, datasync):
        self._make_durable(fh)

    async def fsyncdir(self, fh, datasync):
        directory = self._path(fh)
        for path in [p for p in self.new_files if os.path.dirname(p) == directory]:
            del self.new_files[path]

    async def unlink(self, parent_inode, name, ctx):
        self.new_files.pop(os.path.join(self._path(parent_inode), os.fsdecode(name)), None)
        await super().unlink(parent_inode, name, ctx)

    def crash(self) -> dict[str, int]:
        """Leave the backing files as a disk might hold them after a power cut right now."""
        counts = {"pages kept": 0, "pages lost": 0, "new files lost": 0}
        for inode, pages in self.pending.items():
            fd = self._fd(inode)
            for number, page in pages.items():
                if self.rng.random() < 0.5:
                    os.pwrite(fd, page, number * PAGE)
                    counts["pages kept"] += 1
                else:
                    counts["pages lost"] += 1
        for path in self.new_files:
            if self.rng.random() < 0.5 and os.path.exists(path):
                os.unlink(path)
                counts["new files lost"] += 1
        os.sync()
        return counts


async def serve(operations: CrashFS) -> None:
    async with trio.open_nursery() as nursery:
        nursery.start_soon(pyfuse3.main)
        with trio.open_signal_receiver(signal.SIGUSR1) as signals:
            async for _ in signals:
                # No await between here and terminate: no request is served after the crash.
                counts = operations.crash()
                print("crash:", " ".join(f"{k.replace(' ', '_')}={v}" for k, v in counts.items()), flush=True)
                pyfuse3.terminate()
                return


def main() -> None:
    backing, mountpoint, seed = sys.argv[1], sys.argv[2], int(sys.argv[3])
    operations = CrashFS(os.path.abspath(backing), seed)
    pyfuse3.init(operations, mountpoint, set(pyfuse3.default_options) | {"fsname=crashfs", "subtype=crashfs"})
    try:
        trio.run(serve, operations)
    finally:
        pyfuse3.close(unmount=True)


if __name__ == "__main__":
    main()
