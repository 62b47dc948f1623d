"""The saver on its own, in this process: cells are ``exec``-ed in a TrackedNamespace (as a
kernel runs them), saves go to a plain directory, and loads read it back. What a save looked
at and wrote is read from its report, so "untouched costs nothing" is a checked fact."""

from __future__ import annotations

import base64
import json
import os
import pickle
from pathlib import Path
from types import SimpleNamespace

import pytest

import kernel_helpers
from cowfs.cli.kernel.namespace import TrackedNamespace
from cowfs.cli.kernel.restore import RestoreError, load_saved
from cowfs.cli.kernel.saver import NamespaceSaver
from cowfs.cli.kernel.signing import sign, user_key
from cowfs.cli.kernel.vars_format import HASH_BLOCK, VARS_ROOT


class Session:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.namespace = TrackedNamespace({"__name__": "__main__", "__builtins__": __builtins__})
        self.saver = NamespaceSaver(SimpleNamespace(user_ns=self.namespace, user_ns_hidden={}), session="s")

    def cell(self, code: str) -> None:
        exec(compile(code, "<cell>", "exec"), self.namespace)
        self.saver.save(self.root)

    @property
    def directory(self) -> Path:
        return self.root / VARS_ROOT / "s"

    def load(self, wanted: list[str] | None = None, trust: bool = False, problems: bool = False):
        def read(name: str, size: int | None = None) -> bytearray | None:
            path = self.directory / name
            return bytearray(path.read_bytes()) if path.exists() else None

        values, found = load_saved(read, wanted, "here", trust)
        if problems:
            return values, found
        assert found == []
        return values


@pytest.fixture(autouse=True)
def private_key_dir(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))


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


class Planted:
    """A pickle that, when loaded, proves it ran by creating a file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_restore_never_unpickles_variables_this_user_did_not_sign(session, tmp_path, monkeypatch):
    marker = tmp_path / "ran"
    session.cell("x = [1]")
    manifest = json.loads((session.directory / "manifest.json").read_text())
    planted = base64.b64encode(pickle.dumps((Planted(marker),))).decode()
    gid = manifest["names"]["x"]["group"]
    manifest["groups"][gid]["inline"] = planted
    (session.directory / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(RestoreError, match="manifest was changed after it was signed.*--trust"):
        session.load()
    unsigned = {k: v for k, v in manifest.items() if k not in ("mac", "signer")}
    (session.directory / "manifest.json").write_text(json.dumps(unsigned))
    with pytest.raises(RestoreError, match="not signed"):
        session.load()
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "someone-else"))
    (session.directory / "manifest.json").write_text(json.dumps(sign(unsigned, user_key())))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    with pytest.raises(RestoreError, match="another key"):
        session.load()
    assert not marker.exists(), "nothing was unpickled"
    session.load(trust=True)
    assert marker.exists(), "the user who says --trust gets what was planted: the test can fail"


def test_a_swapped_pickle_file_is_refused_and_saving_never_follows_a_symlink(session, tmp_path):
    session.cell("big = list(range(5000))")  # a skeleton file of its own
    manifest = json.loads((session.directory / "manifest.json").read_text())
    skeleton = session.directory / manifest["groups"][manifest["names"]["big"]["group"]]["skeleton"]
    skeleton.write_bytes(pickle.dumps((Planted(tmp_path / "ran"),)))
    values, problems = session.load(problems=True)
    assert "big" not in values and "not the one its signed manifest names" in " ".join(problems)
    assert not (tmp_path / "ran").exists()
    victim = tmp_path / "victim"
    victim.write_text("precious")
    skeleton.unlink()
    skeleton.symlink_to(victim)
    with pytest.raises(OSError):
        session.cell("big.append(1)")
    assert victim.read_text() == "precious", "the symlink's target was not truncated"


def test_a_module_entry_never_imports_a_file_from_the_workspace(session, tmp_path, monkeypatch):
    (tmp_path / "planted_module.py").write_text(f"open({str(tmp_path / 'ran')!r}, 'w').close()\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))  # as IPython puts the working directory first
    manifest = json.loads((session.directory / "manifest.json").read_text())
    manifest["names"]["np"] = {"module": "planted_module"}
    body = {k: v for k, v in manifest.items() if k not in ("mac", "signer")}
    (session.directory / "manifest.json").write_text(json.dumps(sign(body, user_key())))
    values, problems = session.load(problems=True)
    assert "np" not in values and any("would come from the working directory" in p for p in problems), problems
    assert not (tmp_path / "ran").exists()


def test_the_c_slots_and_their_python_fallback_record_the_same_names():
    from cowfs.cli.kernel.namespace import _PythonTracking

    class PythonOnly(_PythonTracking):
        pass

    program = ("x = 1\ndef f():\n    global z\n    z = len(data) + x\n    return data\n"
               "f()\ndel x\ntry:\n    missing\nexcept NameError:\n    pass\n")
    seen = []
    for namespace in (TrackedNamespace({"__builtins__": __builtins__, "data": [1]}),
                      PythonOnly({"__builtins__": __builtins__, "data": [1]})):
        namespace.touched = set()
        exec(compile(program, "<cell>", "exec"), namespace)
        seen.append(namespace.touched)
        assert dict.get(namespace, "z") == 2 and "x" not in namespace
    assert seen[0] == seen[1]
    assert {"x", "f", "data", "missing"} <= seen[0], "STORE_GLOBAL z is seen by identity, not here"


def test_variables_saved_by_the_format_before_groups_still_restore(tmp_path):
    import cloudpickle

    files = {"manifest.json": json.dumps({
        "x": {"inline": base64.b64encode(cloudpickle.dumps([1, 2])).decode()},
        "big": {"file": "big.pkl"}, "js": {"module": "json"}, "gen": {"error": "generator cannot be saved"},
    }).encode(), "big.pkl": cloudpickle.dumps(list(range(1000)))}

    def read(name: str, size: int | None = None) -> bytearray | None:
        return bytearray(files[name]) if name in files else None

    with pytest.raises(RestoreError, match="not signed"):
        load_saved(read, None, "@1")
    values, problems = load_saved(read, None, "@1", trust=True)
    assert values["x"] == [1, 2] and values["big"] == list(range(1000)) and values["js"] is json
    assert problems == ["gen: not saved: generator cannot be saved"]
    assert set(load_saved(read, ["x"], "@1", trust=True)[0]) == {"x"}
