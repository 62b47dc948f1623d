"""The saver on its own, in this process: cells are ``exec``-ed in a TrackedNamespace (as a
kernel runs them), saves go to a plain directory, and loads read it back. What a save looked
at and wrote is read from its report, so "untouched costs nothing" is a checked fact."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

import kernel_helpers
from cowfs.cli.kernel.namespace import TrackedNamespace
from cowfs.cli.kernel.restore import RestoreError, load_saved
from cowfs.cli.kernel.saver import NamespaceSaver
from cowfs.cli.kernel.vars_format import HASH_BLOCK, VARS_ROOT


class Session:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.namespace = TrackedNamespace({"__name__": "__main__", "__builtins__": __builtins__})
        self.saver = NamespaceSaver(SimpleNamespace(user_ns=self.namespace, user_ns_hidden={}), session="s")

    def cell(self, code: str) -> None:
        exec(compile(code, "<cell>", "exec"), self.namespace)
        self.saver.save(self.root)

    def load(self, wanted: list[str] | None = None) -> dict:
        directory = self.root / VARS_ROOT / "s"

        def read(name: str, size: int | None = None) -> bytearray | None:
            path = directory / name
            return bytearray(path.read_bytes()) if path.exists() else None

        values, problems = load_saved(read, wanted, "here")
        assert problems == []
        return values


@pytest.fixture
def session(tmp_path: Path) -> Session:
    made = Session(tmp_path)
    made.cell("import numpy as np, pandas as pd\n"
              "df = pd.DataFrame(np.random.default_rng(1).random((1 << 17, 4)), columns=list('abcd'))\n"
              "arr = np.random.default_rng(2).random(1 << 19)")
    return made


def test_a_cell_that_touches_nothing_looks_at_nothing_big(session):
    session.cell("y = 1")
    assert session.saver.report.revisited == ["y"]
    assert session.saver.report.hashed_bytes == 0


def test_one_changed_value_rewrites_one_block(session):
    session.cell("df.iloc[5, 0] = -1.0")
    report = session.saver.report
    assert report.revisited == ["df"]
    assert 0 < report.written_bytes <= HASH_BLOCK, "only the block holding the value is written"
    assert session.load(["df"])["df"].iloc[5, 0] == -1.0


def test_aliases_views_functions_and_globals_are_followed(session):
    session.cell("a = b = [1]\nview = arr[10:20000]")
    session.cell("a.append(2)")
    assert session.load()["b"] == [1, 2]
    session.cell("view[0] = -5.0")
    assert session.load(["arr"])["arr"][10] == -5.0, "a write through a view changes the array it views"
    session.cell("def rebind():\n    global c\n    c = {'n': 1}\nrebind()")
    assert session.load()["c"] == {"n": 1}, "STORE_GLOBAL bypasses the dict: identity shows it"
    session.cell("def grow():\n    arr[3] = 7.0\ngrow()")
    assert session.load(["arr"])["arr"][3] == 7.0
    loaded = session.load(["a"])
    assert set(loaded) == {"a", "b"} and loaded["a"] is loaded["b"], "aliases come back as one object"


def test_module_state_changed_by_module_code_is_seen(session):
    kernel_helpers.CACHE.clear()
    session.cell("import kernel_helpers\ncache = kernel_helpers.CACHE")
    session.cell("kernel_helpers.remember(41)")
    assert session.load(["cache"])["cache"] == [41]
    session.cell("from kernel_helpers import remember\nremember(42)")
    assert session.load(["cache"])["cache"] == [41, 42]


def test_unknown_names_are_refused_with_what_was_saved(session):
    with pytest.raises(RestoreError, match="nope was not saved at here; saved there: arr, df, np, pd"):
        session.load(["nope"])


def test_a_failed_save_makes_the_next_one_start_afresh(session, monkeypatch):
    real_pwrite = os.pwrite

    def failing(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "pwrite", failing)
    with pytest.raises(OSError):
        session.cell("arr[0] = 1.0\ndf.iloc[0, 0] = 2.0")
    monkeypatch.setattr(os, "pwrite", real_pwrite)
    session.cell("z = 0")
    assert set(session.saver.report.revisited) >= {"arr", "df", "z"}, "nothing half-written is trusted"
    values = session.load()
    assert values["arr"][0] == 1.0 and values["df"].iloc[0, 0] == 2.0


def test_pickling_a_function_does_not_count_as_touching_what_it_reads(session):
    session.cell("def total():\n    return float(arr.sum())")
    session.cell("y = 2")
    assert session.saver.report.revisited == ["y"], "saving total read arr through the namespace, not the cell"
    session.cell("t = total()")
    assert set(session.saver.report.revisited) >= {"arr", "t", "total"}, "calling it reads arr"
