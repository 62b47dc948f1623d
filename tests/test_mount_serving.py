"""Requests that arrive together from many callers are all answered, correctly (the daemon
serves bursts without going back to trio between requests: daemon/fuse_reader.py). That a
caller waiting in the daemon holds up no one else is shown with a remote that hangs, in
tests/test_remote.py."""

from __future__ import annotations

import os
import threading

import pytest

from conftest import needs_fuse

pytestmark = needs_fuse


@pytest.fixture
def mnt(workspace):
    return workspace.mount()


def test_requests_from_many_callers_at_once_are_all_answered(mnt):
    def worker(n: int) -> None:
        home = mnt / f"w{n}"
        home.mkdir()
        for i in range(150):
            (home / f"{i}.txt").write_text(f"{n}:{i}")
        for i in range(0, 150, 3):
            os.unlink(home / f"{i}.txt")
        for i in range(1, 150, 3):
            os.rename(home / f"{i}.txt", home / f"{i}.moved")

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for n in range(8):
        home = mnt / f"w{n}"
        expected = {f"{i}.txt" for i in range(2, 150, 3)} | {f"{i}.moved" for i in range(1, 150, 3)}
        assert set(os.listdir(home)) == expected
        assert (home / "5.txt").read_text() == f"{n}:5"
        assert (home / "7.moved").read_text() == f"{n}:7"
