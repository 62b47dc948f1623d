"""Where tools can tell a cowfs mount from ext4 (issue 15): each behaviour is checked on a native
directory and on a mount in the same run, and must be the same."""

from __future__ import annotations

import ctypes
import errno
import os
import stat
import subprocess
from pathlib import Path

import pytest

from conftest import needs_fuse

pytestmark = needs_fuse

libc = ctypes.CDLL(None, use_errno=True)
AT_FDCWD = -100
RENAME_WHITEOUT = 4


@pytest.fixture
def places(workspace, tmp_path):
    native = tmp_path / "native"
    native.mkdir()
    return {"native": native, "cowfs": workspace.mount()}


def test_touching_a_new_file_never_moves_its_times_backwards(places):
    """One clock: the kernel stamps utime(UTIME_NOW) and writes with its coarse clock, so the
    daemon must not stamp creations with a finer, later one."""
    for kind, root in places.items():
        backwards = 0
        for i in range(300):
            path = root / f"t{i}"
            os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o644))  # as Path.touch() makes it
            created = path.stat()
            os.utime(path)
            touched = path.stat()
            backwards += touched.st_mtime_ns < created.st_mtime_ns or touched.st_ctime_ns < created.st_ctime_ns
        assert backwards == 0, f"{kind}: {backwards} of 300 files went back in time when touched"


def test_a_snapshot_and_a_remount_keep_the_times_the_user_saw(workspace, places):
    mnt = places["cowfs"]
    seen = {}
    for i in range(20):
        path = mnt / f"f{i}"
        with open(path, "wb") as handle:
            handle.write(b"first" * 1000)
        with open(path, "ab") as handle:
            handle.write(b"more" * 1000)
        info = path.stat()
        seen[path.name] = (info.st_mtime_ns, info.st_ctime_ns, info.st_size)
    snapshot = workspace.snap(mnt, "times", wait=True)
    back = workspace.mount(snapshot["id"], name="back")
    in_snapshot = {name: ((back / name).stat().st_mtime_ns, (back / name).stat().st_ctime_ns,
                          (back / name).stat().st_size) for name in seen}
    assert {n: v[0] for n, v in in_snapshot.items()} == {n: v[0] for n, v in seen.items()}
    workspace.umount(mnt)
    again = workspace.mount()
    after = {name: ((again / name).stat().st_mtime_ns, (again / name).stat().st_size) for name in seen}
    assert after == {n: (v[0], v[2]) for n, v in seen.items()}


def test_a_directory_fd_seeked_to_a_saved_cookie_lists_the_rest(places):
    """NFS re-export re-opens a directory and seeks to the cookie it handed out."""
    results = {}
    for kind, root in places.items():
        directory = root / "d"
        directory.mkdir()
        for i in range(20):
            (directory / f"e{i:02d}").write_bytes(b"")
        results[kind] = read_after_cookie(directory, 8)
    for kind, (first, rest) in results.items():
        assert len(first) == 22 and set(first) >= {".", ".."}, (kind, first)
        assert rest == first[9:], kind


def read_after_cookie(directory: Path, index: int) -> tuple[list[str], list[str]]:
    """All names of ``directory`` in readdir order, and those after entry ``index`` as read
    by a fresh descriptor seeked to that entry's d_off (telldir/seekdir, as NFS does)."""
    libc.opendir.restype = ctypes.c_void_p
    libc.readdir.restype = ctypes.c_void_p
    libc.readdir.argtypes = libc.closedir.argtypes = libc.telldir.argtypes = [ctypes.c_void_p]
    libc.telldir.restype = ctypes.c_long
    libc.seekdir.argtypes = [ctypes.c_void_p, ctypes.c_long]

    class Dirent(ctypes.Structure):
        _fields_ = [("d_ino", ctypes.c_uint64), ("d_off", ctypes.c_int64), ("d_reclen", ctypes.c_ushort),
                    ("d_type", ctypes.c_ubyte), ("d_name", ctypes.c_char * 256)]

    def names(handle) -> tuple[list[str], list[int]]:
        found, offsets = [], []
        while (entry := libc.readdir(handle)):
            dirent = Dirent.from_address(entry)
            found.append(dirent.d_name.decode())
            offsets.append(dirent.d_off)
        return found, offsets

    handle = libc.opendir(str(directory).encode())
    first, offsets = names(handle)
    libc.closedir(handle)
    fresh = libc.opendir(str(directory).encode())
    libc.seekdir(fresh, offsets[index])
    rest, _ = names(fresh)
    libc.closedir(fresh)
    return first, rest


def test_setgid_directories_pass_on_their_group(places):
    for kind, root in places.items():
        shared = root / "shared"
        shared.mkdir()
        os.chown(shared, 0, 4242)
        os.chmod(shared, 0o2775)
        (shared / "file").write_bytes(b"")
        (shared / "sub").mkdir()
        assert (shared / "file").stat().st_gid == 4242, kind
        sub = (shared / "sub").stat()
        assert sub.st_gid == 4242 and sub.st_mode & stat.S_ISGID, kind


def test_unsupported_rename_flags_are_einval(places):
    """RENAME_WHITEOUT is for overlay filesystems; cowfs has no whiteouts, so it must say EINVAL
    (as filesystems without them do) rather than do a plain rename."""
    root = places["cowfs"]
    libc.renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    (root / "a").write_bytes(b"a")
    result = libc.renameat2(AT_FDCWD, str(root / "a").encode(), AT_FDCWD, str(root / "b").encode(), RENAME_WHITEOUT)
    assert (result, ctypes.get_errno()) == (-1, errno.EINVAL)
    assert (root / "a").exists() and not (root / "b").exists()


def test_files_larger_than_the_maximum_are_efbig(places):
    path = places["cowfs"] / "huge"
    path.write_bytes(b"x")
    with pytest.raises(OSError) as raised:
        os.truncate(path, 2**62)
    assert raised.value.errno == errno.EFBIG
    assert path.stat().st_size == 1
    fd = os.open(path, os.O_WRONLY)
    try:
        os.pwrite(fd, b"beyond", 2**45)  # the page cache takes it (FUSE cannot set s_maxbytes)...
        with pytest.raises(OSError) as raised:
            os.fsync(fd)  # ...and the hand-over says so
        assert raised.value.errno == errno.EFBIG
    finally:
        os.close(fd)


def test_directories_have_a_size(places):
    for kind, root in places.items():
        assert (root / ".").stat().st_size > 0, kind


def test_sparse_files_look_sparse(places):
    """du, cp --sparse=auto, tar -S and rsync -S go by st_blocks."""
    blocks = {}
    for kind, root in places.items():
        path = root / "sparse"
        with open(path, "wb") as handle:
            handle.seek(5 * 2**30)
            handle.write(os.urandom(4096))
        dense = root / "dense"
        dense.write_bytes(os.urandom(3 << 20))
        blocks[kind] = (path.stat().st_blocks * 512, dense.stat().st_blocks * 512)
        with open(path, "r+b") as handle:  # filling two holes adds two blocks, no more
            for offset in (2**30, 2 * 2**30):
                handle.seek(offset)
                handle.write(b"x" * 4096)
        filled = path.stat().st_blocks * 512
        assert blocks[kind][0] < filled <= blocks[kind][0] + 2 * 256 * 1024, (kind, blocks[kind][0], filled)
        os.truncate(path, 2**30 + 4096)  # cuts off the block at 2 GiB and the one at 5 GiB
        assert path.stat().st_blocks * 512 < filled, kind
        os.truncate(path, 5 * 2**30 + 4096)
        with open(path, "r+b") as handle:
            handle.seek(5 * 2**30)
            handle.write(os.urandom(4096))
        copy = root / "copy"
        subprocess.run(["cp", "--sparse=auto", str(path), str(copy)], check=True)
        assert copy.stat().st_blocks * 512 <= 256 * 1024, (kind, copy.stat().st_blocks)
    for kind, (sparse, dense) in blocks.items():
        assert sparse <= 256 * 1024, (kind, sparse)  # ext4: 4 KiB (or 8); cowfs: one 128 KiB block
        assert dense >= 3 << 20, (kind, dense)


def test_sequential_reads_ask_for_1_mib_at_a_time(workspace):
    """The kernel takes a FUSE mount's read-ahead from the INIT reply (128 KiB); the daemon
    raises it once that reply is out, so a file read in order costs 8x fewer requests."""
    mnt = workspace.mount()
    (mnt / "f").write_bytes(b"x")  # INIT is long answered once a request has been served
    device = next(line.split()[2] for line in Path("/proc/self/mountinfo").read_text().splitlines()
                  if line.split()[4] == str(mnt))
    assert Path(f"/sys/class/bdi/{device}/read_ahead_kb").read_text().strip() == "1024"
