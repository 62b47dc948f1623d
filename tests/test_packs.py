"""Pack files on their own: what a pack holds after every sync, however its bytes reached the
disk (O_DIRECT, the page cache, or O_DIRECT refused mid-way), and after a failed append."""

from __future__ import annotations

import errno
import fcntl
import os
import random
from pathlib import Path

import pytest

from cowfs.fs import packs
from cowfs.fs.chunks import SealedChunk, digest_of
from cowfs.fs.packs import PackReader, PackWriter, pack_path, scan_pack

STAGE = 64 << 10  # small, so that records cross the gathering buffer's end many times


def chunk(rng: random.Random, size: int) -> SealedChunk:
    payload = rng.randbytes(size)
    return SealedChunk(digest_of(payload), payload, size)


def is_direct(fd: int) -> bool:
    return bool(fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT)


@pytest.fixture(params=["direct", "page cache", "direct refused at the first write"])
def how(request, monkeypatch) -> str:
    monkeypatch.setattr(packs, "STAGE_BYTES", STAGE)
    if request.param == "page cache":
        monkeypatch.setattr(packs, "_open_direct", lambda path: None)
    elif request.param == "direct refused at the first write":
        real = packs._write_fully

        def refusing(fd: int, parts: list, offset: int) -> None:
            if is_direct(fd):
                raise OSError(errno.EINVAL, "direct write refused")
            real(fd, parts, offset)

        monkeypatch.setattr(packs, "_write_fully", refusing)
    return request.param


def assert_pack_holds(directory: Path, writer: PackWriter, expected: list[tuple[SealedChunk, object]]) -> None:
    """The file is exactly the records appended, readable by scanning and by location."""
    path = pack_path(directory, writer.pack_id)
    assert path.stat().st_size == writer.size
    scanned = list(scan_pack(path))
    assert [(c.digest, c.raw_len, loc.offset, len(c.payload)) for c, loc in expected] == scanned
    reader = PackReader(directory)
    try:
        for sealed, location in expected:
            assert reader.read(location) == sealed.payload
    finally:
        reader.close()


def test_a_pack_is_its_records_at_every_sync(tmp_path: Path, how: str):
    rng = random.Random(7)
    writer = PackWriter(tmp_path, 1)
    expected: list[tuple[SealedChunk, object]] = []
    for round_ in range(40):
        batch = [chunk(rng, rng.choice([1, 100, 4000, 4096 - 40, 20_000, 70_000])) for _ in range(rng.randint(1, 6))]
        locations = writer.append_many(batch) if round_ % 3 else [writer.append(c) for c in batch]
        expected += zip(batch, locations)
        if rng.random() < 0.5:
            writer.sync()
            assert_pack_holds(tmp_path, writer, expected)
    writer.close()
    assert_pack_holds(tmp_path, writer, expected)


def write_fails_at(monkeypatch, how: str, failing_write: int) -> None:
    """The disk fills up at the ``failing_write``-th write from now: direct writes raise ENOSPC
    (as the kernel reports it), page-cache writes come back short (as a filling disk makes them)."""
    calls = []
    if how == "direct":
        real = packs._write_fully

        def filling_up(fd: int, parts: list, offset: int) -> None:
            calls.append(offset)
            if len(calls) == failing_write:
                raise OSError(errno.ENOSPC, "No space left on device")
            real(fd, parts, offset)

        monkeypatch.setattr(packs, "_write_fully", filling_up)
    else:
        real_pwritev = os.pwritev

        def short(fd: int, parts: list, offset: int) -> int:
            calls.append(offset)
            if len(calls) == failing_write:
                return os.pwrite(fd, parts[0], offset)
            return real_pwritev(fd, parts, offset)

        monkeypatch.setattr(packs.os, "pwritev", short)


@pytest.mark.parametrize(("how", "failing_write"), [("direct", 1), ("direct", 2), ("page cache", 1)], indirect=["how"])
def test_a_failed_append_leaves_the_pack_as_it_was(tmp_path: Path, how: str, monkeypatch, failing_write: int):
    """A disk that fills up in the middle of an append: the records before it stay, the torn ones
    are gone, and the next append and sync carry on from there."""
    rng = random.Random(11)
    writer = PackWriter(tmp_path, 1)
    kept = [chunk(rng, 5000), chunk(rng, 3)]
    expected = list(zip(kept, writer.append_many(kept)))
    writer.sync()
    more = [chunk(rng, 30_000)]  # appended (gathered in memory when direct), not synced
    expected += zip(more, writer.append_many(more))

    with monkeypatch.context() as failing:
        write_fails_at(failing, how, failing_write)
        torn = [chunk(rng, 40_000) for _ in range(4)]  # 160 KB: the 64 KiB buffer fills more than once
        with pytest.raises(OSError) as failure:
            writer.append_many(torn)
        assert failure.value.errno == errno.ENOSPC

    after = [chunk(rng, 50_000), chunk(rng, 7)]
    expected += zip(after, writer.append_many(after))
    writer.sync()
    assert_pack_holds(tmp_path, writer, expected)
    writer.close()
