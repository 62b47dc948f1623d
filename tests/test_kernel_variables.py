"""Variables saved per cell are never wrong, in a real kernel in a real mount.

The property test runs random cells (aliases, views, in-place changes through methods, through
functions, ``global``, ``exec``, ``globals()``, class and module attributes, deletions) in a
fresh kernel; right after each cell the kernel describes its whole namespace (the truth, read
without counting as a touch); then every after-cell snapshot is restored and must describe
the same. The end-to-end test mutates a frame in place and brings back the frame from before.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jupyter_client.manager import start_new_kernel

from conftest import needs_fuse
from namespace_fingerprint import describe

pytestmark = needs_fuse
TESTS = Path(__file__).resolve().parent

SETUP = ("import numpy as np, pandas as pd, random\n"
         "open('rebind_b.py', 'w').write('b = [len(a) if \"a\" in dir() else -1]\\n')")
OPERATIONS = [
    "a = [{k}]",
    "b = a",
    "a.append({k})",
    "b = [a, {k}]",
    "del a",
    "arr = np.arange(40000, dtype='float64')",
    "view = arr[100:30000]",
    "view[5] = {k}",
    "arr[7] = {k}",
    "arr = arr * 2",
    "df = pd.DataFrame({{'x': np.arange(20000.0), 'y': np.ones(20000)}})",
    "df.iloc[3, 0] = {k}",
    "df['z'] = df['x'] * {k}",
    "col = df['y']",
    "def bump():\n    a.append({k})",
    "bump()",
    "def rebind():\n    global c\n    c = {{'n': {k}}}",
    "rebind()",
    "exec('d = [{k}]')",
    "globals()['e'] = [{k}]",
    "e.extend([{k}])",
    "class Box:\n    items = []",
    "box = Box()",
    "Box.items.append({k})",
    "box.tag = {k}",
    "import kernel_helpers\ncache = kernel_helpers.CACHE",
    "kernel_helpers.remember({k})",
    "from kernel_helpers import remember\nremember({k})",
    "y = {k}",
    "rng = random.Random({k})",  # C state (an opaque object): looked at whenever anything is saved
    "draw = rng.random",
    "draw()",
    "%run -i rebind_b.py",
]
TRUTH = "__import__('namespace_fingerprint').describe(get_ipython().user_ns)"


class Kernel:
    """A real IPython kernel started in ``directory`` with the extension installed."""

    def __init__(self, directory: Path, env: dict | None = None) -> None:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
               **(env or {})}
        self.manager, self.client = start_new_kernel(kernel_name="python3", cwd=str(directory), env=env)

    def run(self, code: str) -> dict:
        outputs: list[dict] = []
        reply = self.client.execute_interactive(code, timeout=120, output_hook=outputs.append)
        reply["outputs"] = outputs
        return reply

    def truth(self) -> str:
        reply = self.client.execute_interactive("", silent=True, user_expressions={"truth": TRUTH}, timeout=60)
        value = reply["content"]["user_expressions"]["truth"]
        assert value["status"] == "ok", value
        return eval(value["data"]["text/plain"])  # the repr of a str

    def stop(self) -> None:
        self.client.stop_channels()
        self.manager.shutdown_kernel(now=True)


@pytest.fixture
def kernel_ws(kernel_env):
    kernel_env.mnt = kernel_env.mount()
    return kernel_env


def after_snapshots(ws, session_prefix: str | None = None) -> dict[int, object]:
    """The after-cell snapshots, by execution count, of the newest kernel session."""
    store = ws.open_store()
    try:
        records = [r for r in store.snapshots() if r.meta.get("phase") == "after"]
    finally:
        store.close()
    session = records[-1].meta["vars"]
    return {r.meta["execution_count"]: r for r in records if r.meta["vars"] == session}


def restored_description(ws, record) -> tuple[str, list[str]]:
    from cowfs.cli.kernel.restore import load_namespace

    store = ws.open_store()
    try:
        values, problems = load_namespace(store, store.snapshot(record.id))
    finally:
        store.close()
    return describe(values), problems


cells = st.lists(st.sampled_from(OPERATIONS), min_size=4, max_size=12)
# Saving on the cell's path, and from a forked child for every save that has a buffer (while
# the next cells already run and change the same arrays).
MODES = {"inline": {"COWFS_VARS_BACKGROUND": "0"}, "background": {"COWFS_VARS_BACKGROUND_MIN": "1"}}


@settings(max_examples=int(os.environ.get("COWFS_VARIABLE_EXAMPLES", "8")), deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(program=cells, mode=st.sampled_from(sorted(MODES)))
def test_restored_variables_equal_the_namespace_after_every_cell(kernel_ws, program, mode):
    ws = kernel_ws
    kernel = Kernel(ws.mnt, MODES[mode])
    truths: dict[int, str] = {}
    try:
        for k, template in enumerate([SETUP] + program):
            reply = kernel.run(template.format(k=k + 1))
            truths[reply["content"]["execution_count"]] = kernel.truth()
    finally:
        kernel.stop()
    ws.cli("snap", "--wait", "-m", "settle", str(ws.mnt))
    snapshots = after_snapshots(ws)
    assert set(snapshots) == set(truths), "every cell has its after-cell snapshot"
    for count, truth in truths.items():
        restored, problems = restored_description(ws, snapshots[count])
        assert problems == []
        expected, got = json.loads(truth), json.loads(restored)
        assert got == expected, f"cell [{count}] of {[SETUP] + program} ({mode}): restored variables differ"


def test_frame_mutated_in_place_comes_back_as_it_was_before(kernel_ws):
    ws = kernel_ws
    kernel = Kernel(ws.mnt)
    try:
        kernel.run("import numpy as np, pandas as pd\n"
                   "df = pd.DataFrame(np.random.default_rng(7).random((400000, 4)), columns=list('abcd'))\n"
                   "before = float(df['a'].sum()); first = float(df.iloc[0, 0])")
        kernel.run("df.iloc[0, 0] = -1.0\ndf['b'] *= 2")
        kernel.run("model = {'fitted': True}")
    finally:
        kernel.stop()
    ws.cli("snap", "--wait", "-m", "settle", str(ws.mnt))
    snapshots = after_snapshots(ws)
    before_mutation = snapshots[1]
    fresh = Kernel(ws.mnt)
    try:
        report = fresh.run(f"%cowfs restore {before_mutation.name} df")
        text = "".join(o["content"].get("text", "") for o in report["outputs"])
        assert "restored 1 variables" in text and ": df" in text, text
        check = fresh.client.execute_interactive(
            "", silent=True, timeout=60, user_expressions={
                "same": "bool(df.iloc[0, 0] == first) if 'first' in dir() else 'first-missing'",
                "frame": "(df.shape, float(df.iloc[0, 0]), float(df['b'].sum()))"})
        expressions = check["content"]["user_expressions"]
        assert expressions["same"]["data"]["text/plain"] == "'first-missing'", "only df was asked for"
        shape, first, b_sum = eval(expressions["frame"]["data"]["text/plain"])
        changed = fresh.run("df.iloc[1, 1] = 5.0\nprint(float(df.iloc[1, 1]))")
        assert "".join(o["content"].get("text", "") for o in changed["outputs"]).strip() == "5.0", \
            "a restored frame can be changed again"
    finally:
        fresh.stop()
    original = subprocess.run([sys.executable, "-c",
                               "import numpy as np, pandas as pd\n"
                               "df = pd.DataFrame(np.random.default_rng(7).random((400000, 4)), columns=list('abcd'))\n"
                               "print(repr((float(df.iloc[0, 0]), float(df['b'].sum()))))"],
                              capture_output=True, text=True, check=True).stdout
    assert shape == (400000, 4)
    assert (first, b_sum) == eval(original), "the frame is the one from before the in-place change"


def test_variables_written_in_the_background_belong_to_their_cell(kernel_ws):
    ws = kernel_ws
    kernel = Kernel(ws.mnt, MODES["background"])
    try:
        kernel.run("import numpy as np\narr = np.arange(1 << 20, dtype='float64')")
        kernel.run("arr[:] = 7.0")  # runs while the child may still be writing the first version
        kernel.run("arr[5] = -1.0")
    finally:
        kernel.stop()
    snapshots = after_snapshots(ws)
    from cowfs.cli.kernel.restore import load_namespace

    store = ws.open_store()
    try:  # each load waits for the child that writes that cell's variables (the kernel is gone)
        first = load_namespace(store, snapshots[1])[0]["arr"]
        second = load_namespace(store, snapshots[2])[0]["arr"]
        third = load_namespace(store, snapshots[3])[0]["arr"]
        companions = {r.meta["for"] for r in store.snapshots() if r.meta.get("kind") == "vars"}
    finally:
        store.close()
    assert {snapshots[n].name for n in (1, 2, 3)} <= companions, "each cell's buffers were written by a child"
    assert all(snapshots[n].meta.get("vars_pending") for n in (1, 2, 3))
    assert first[5] == 5.0 and first[-1] == (1 << 20) - 1
    assert (second == 7.0).all()
    assert third[5] == -1.0 and third[4] == 7.0
    cells = json.loads(ws.cli("log", "--cells", "--json").stdout)
    assert {c["variables"] for c in cells} == {"complete"}
    plain = json.loads(ws.cli("log", "--json").stdout)
    assert not any(s["meta"].get("kind") == "vars" for s in plain), "companions stay out of the plain log"


def test_variables_planted_in_the_workspace_are_refused_at_restore(kernel_ws, tmp_path):
    ws = kernel_ws
    marker = tmp_path / "planted-code-ran"
    kernel = Kernel(ws.mnt)
    try:
        kernel.run("x = 1")
        session = ws.mnt / after_snapshots(ws)[1].meta["vars"]
        payload = f"(__import__('pathlib').Path({str(marker)!r}).touch(),)"
        # code running in the workspace (in a namespace of its own, so the saver has nothing new
        # to write over it) plants a manifest whose pickle runs code when loaded
        plant = ("import base64, json, pickle, pathlib\n"
                 "class Evil:\n"
                 f"    def __reduce__(self): return (eval, ({payload!r},))\n"
                 f"pathlib.Path({str(session / 'manifest.json')!r}).write_text(json.dumps("
                 "{'format': 2, 'names': {'x': {'group': 'g'}}, 'groups': {'g': {'names': ['x'], "
                 "'types': ['int'], 'buffers': [], 'inline': base64.b64encode(pickle.dumps(Evil())).decode()}}}))\n")
        kernel.run(f"exec({plant!r}, {{}})")
    finally:
        kernel.stop()
    ws.cli("snap", "--wait", str(ws.mnt))
    planted_at = after_snapshots(ws)[2].name
    fresh = Kernel(ws.mnt)
    try:
        reply = fresh.run(f"%cowfs restore {planted_at}")
        said = "".join(o["content"].get("text", "") for o in reply["outputs"])
    finally:
        fresh.stop()
    assert "not restoring the variables of" in said and "--trust" in said, said
    assert said.count("\n") == 1, "one line"
    assert not marker.exists(), "the planted pickle never ran"
    trusting = Kernel(ws.mnt)
    try:
        trusting.run(f"%cowfs restore {planted_at} --trust")
    finally:
        trusting.stop()
    assert marker.exists(), "with --trust the planted pickle is loaded: it was in the snapshot"
