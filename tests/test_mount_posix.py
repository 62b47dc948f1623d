"""POSIX behaviour through a real mount, with ordinary system calls."""

from __future__ import annotations

import errno
import mmap
import os
import stat

import pytest

from conftest import drop_caches, needs_fuse

pytestmark = needs_fuse


@pytest.fixture
def mnt(workspace):
    return workspace.mount()


def expect_errno(code: int, call, *args) -> None:
    with pytest.raises(OSError) as raised:
        call(*args)
    assert raised.value.errno == code, raised.value


def test_files_survive_cache_drop_byte_for_byte(mnt):
    payload = os.urandom(3 * 1024 * 1024 + 17)
    (mnt / "data.bin").write_bytes(payload)
    drop_caches()
    assert (mnt / "data.bin").read_bytes() == payload
    assert (mnt / "data.bin").stat().st_size == len(payload)


def test_rewriting_a_file_shorter_truncates_it(workspace, mnt):
    (mnt / "f.csv").write_text("a long first version of the file\n" * 100)
    (mnt / "f.csv").write_text("short\n")
    with open(mnt / "g", "w") as handle:
        handle.write("x" * 5000)
    with open(mnt / "g", "r+") as handle:
        handle.truncate(10)
    drop_caches()
    assert (mnt / "f.csv").read_text() == "short\n"
    workspace.umount(mnt)
    mnt = workspace.mount()
    assert (mnt / "f.csv").read_text() == "short\n"
    assert (mnt / "g").read_text() == "x" * 10


def test_directories_symlinks_hardlinks(mnt):
    (mnt / "a" / "b").mkdir(parents=True)
    (mnt / "a" / "b" / "f").write_text("hi")
    os.symlink("b/f", mnt / "a" / "link")
    os.link(mnt / "a" / "b" / "f", mnt / "a" / "hard")
    assert os.readlink(mnt / "a" / "link") == "b/f"
    assert (mnt / "a" / "link").read_text() == "hi"
    assert (mnt / "a" / "hard").stat().st_nlink == 2
    assert (mnt / "a" / "hard").stat().st_ino == (mnt / "a" / "b" / "f").stat().st_ino
    assert sorted(os.listdir(mnt / "a")) == ["b", "hard", "link"]
    assert (mnt / "a").stat().st_nlink == 3
    expect_errno(errno.ENOTEMPTY, os.rmdir, mnt / "a")
    expect_errno(errno.EEXIST, os.mkdir, mnt / "a")
    expect_errno(errno.ENOENT, os.stat, mnt / "nope")
    expect_errno(errno.ENOTDIR, os.listdir, mnt / "a" / "b" / "f")
    expect_errno(errno.EISDIR, os.unlink, mnt / "a" / "b")
    fd = os.open(mnt / "x", os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    os.close(fd)
    expect_errno(errno.EEXIST, os.open, mnt / "x", os.O_CREAT | os.O_EXCL | os.O_WRONLY)


def test_rename_over_existing_file_and_empty_dir(mnt):
    (mnt / "src").write_text("new")
    (mnt / "dst").write_text("old")
    os.rename(mnt / "src", mnt / "dst")
    assert (mnt / "dst").read_text() == "new" and not (mnt / "src").exists()
    (mnt / "d1").mkdir()
    (mnt / "d1" / "inside").write_text("1")
    (mnt / "d2").mkdir()
    os.rename(mnt / "d1", mnt / "d2")
    assert (mnt / "d2" / "inside").read_text() == "1"
    (mnt / "d3").mkdir()
    (mnt / "d3" / "x").write_text("x")
    expect_errno(errno.ENOTEMPTY, os.rename, mnt / "d2", mnt / "d3")
    expect_errno(errno.EISDIR, os.rename, mnt / "dst", mnt / "d3")


def test_unlinked_open_file_stays_readable_until_close(mnt):
    path = mnt / "tmp"
    path.write_bytes(b"still here" * 1000)
    with open(path, "rb") as handle:
        os.unlink(path)
        assert not path.exists()
        drop_caches()
        assert handle.read() == b"still here" * 1000
    assert os.listdir(mnt) == []


def test_truncate_chmod_utime_statfs(mnt):
    path = mnt / "f"
    path.write_bytes(b"x" * 300000)
    os.truncate(path, 10)
    os.truncate(path, 20)
    drop_caches()
    assert path.read_bytes() == b"x" * 10 + bytes(10)
    os.chmod(path, 0o600)
    os.chown(path, 1234, 5678)
    os.utime(path, ns=(1_000_000_000, 2_000_000_000))
    info = path.stat()
    assert stat.S_IMODE(info.st_mode) == 0o600 and (info.st_uid, info.st_gid) == (1234, 5678)
    assert info.st_mtime_ns == 2_000_000_000
    disk = os.statvfs(mnt)
    assert disk.f_bavail > 0 and disk.f_namemax == 255


def test_sparse_file_of_100_gib(mnt):
    path = mnt / "sparse"
    end = 100 * 2**30
    with open(path, "wb") as handle:
        handle.seek(5 * 2**30)
        handle.write(b"middle")
        handle.seek(end)
        handle.write(b"end")
    drop_caches()
    with open(path, "rb") as handle:
        handle.seek(end - 3)
        assert handle.read() == b"\0\0\0end"
        handle.seek(5 * 2**30)
        assert handle.read(6) == b"middle"
        handle.seek(2**30)
        assert handle.read(4096) == bytes(4096)
    assert path.stat().st_size == end + 3
    os.truncate(path, 5 * 2**30 + 3)
    drop_caches()
    with open(path, "rb") as handle:
        handle.seek(5 * 2**30)
        assert handle.read() == b"mid"


def test_xattrs_are_off_unless_asked_for(mnt):
    path = mnt / "f"
    path.write_text("x")
    expect_errno(errno.ENOTSUP, os.setxattr, path, "user.origin", b"notebook")
    expect_errno(errno.ENOTSUP, os.getxattr, path, "user.origin")
    path.write_text("writes work as ever")
    assert path.read_text() == "writes work as ever"


def test_xattrs(workspace):
    mnt = workspace.mount(options=("--xattrs",))
    path = mnt / "f"
    path.write_text("x")
    os.setxattr(path, "user.origin", b"notebook")
    os.setxattr(path, "user.empty", b"")
    os.setxattr(path, "user.kept", b"1")
    assert os.getxattr(path, "user.origin") == b"notebook"
    assert os.getxattr(path, "user.empty") == b""
    assert sorted(os.listxattr(path)) == ["user.empty", "user.kept", "user.origin"]
    os.removexattr(path, "user.origin")
    expect_errno(errno.ENODATA, os.getxattr, path, "user.origin")
    workspace.umount(mnt)
    mnt = workspace.mount()  # without --xattrs: a branch that holds some keeps them
    assert os.getxattr(mnt / "f", "user.kept") == b"1"


def test_mmap_write_and_read(mnt):
    path = mnt / "mapped"
    path.write_bytes(bytes(1 << 20))
    with open(path, "r+b") as handle:
        with mmap.mmap(handle.fileno(), 0) as mapped:
            mapped[4096:4101] = b"hello"
            mapped.flush()
    drop_caches()
    with open(path, "rb") as handle, mmap.mmap(handle.fileno(), 0, prot=mmap.PROT_READ) as mapped:
        assert mapped[4096:4101] == b"hello"


def test_append_and_fsync(mnt):
    path = mnt / "log"
    for line in (b"one\n", b"two\n"):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        os.write(fd, line)
        os.fsync(fd)
        os.close(fd)
    drop_caches()
    assert path.read_bytes() == b"one\ntwo\n"


def test_readdir_while_directory_changes(mnt):
    for i in range(300):
        (mnt / f"f{i:03d}").write_text("x")
    seen = []
    with os.scandir(mnt) as entries:
        for i, entry in enumerate(entries):
            seen.append(entry.name)
            if i == 10:
                for j in range(300, 350):
                    (mnt / f"f{j:03d}").write_text("y")
                (mnt / "f299").unlink()
    original = {f"f{i:03d}" for i in range(299)}
    assert original <= set(seen)
    assert len(seen) == len(set(seen))


def test_cross_mount_rename_is_exdev(workspace, mnt):
    (mnt / "f").write_text("x")
    workspace.snap(mnt, "s")
    other = workspace.mount("s", name="other")
    expect_errno(errno.EXDEV, os.rename, mnt / "f", other / "g")


def test_long_and_non_utf8_names_and_deep_nesting(mnt):
    longest = b"n" * 255
    odd = b"caf\xe9-\xff\xfe.csv"  # not UTF-8
    root = os.fsencode(mnt)
    with open(os.path.join(root, longest), "wb") as handle:
        handle.write(b"long")
    with open(os.path.join(root, odd), "wb") as handle:
        handle.write(b"odd")
    expect_errno(errno.ENAMETOOLONG, open, os.path.join(root, b"n" * 256), "wb")
    deep = mnt
    for level in range(100):
        deep = deep / f"d{level}"
    deep.mkdir(parents=True)
    (deep / "bottom").write_text("deep")
    drop_caches()
    assert sorted(os.listdir(root)) == sorted([b"d0", longest, odd])
    assert open(os.path.join(root, odd), "rb").read() == b"odd"
    assert (deep / "bottom").read_text() == "deep"


def test_many_threads_write_ranges_of_one_file(mnt):
    import threading

    path = mnt / "shared.bin"
    path.write_bytes(b"")
    chunk = 300_000
    pieces = {i: os.urandom(chunk) for i in range(8)}

    def writer(i: int) -> None:
        fd = os.open(path, os.O_WRONLY)
        try:
            for offset in range(0, chunk, 4096):
                os.pwrite(fd, pieces[i][offset:offset + 4096], i * chunk + offset)
        finally:
            os.close(fd)

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    drop_caches()
    assert path.read_bytes() == b"".join(pieces[i] for i in range(8))
