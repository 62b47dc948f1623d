"""End to end with real kernels: a notebook runs in a mount with every cell snapshotted; a
snapshot before a chosen cell mounts as a branch with its files; a fresh kernel there gets
the variables back."""

from __future__ import annotations

import json

import nbformat
from nbclient import NotebookClient
from nbformat.v4 import new_code_cell, new_notebook

from conftest import needs_fuse

pytestmark = needs_fuse

CELLS = [
    "import json, pathlib\nx = 1\npathlib.Path('a.txt').write_text('one')",
    "pathlib.Path('a.txt').write_text('two')\npathlib.Path('b.bin').write_bytes(bytes(range(256)) * 400)\n"
    "data = {'k': [1, 2, 3]}\nx = 2\nsquares = (i * i for i in range(3))\n"
    "import numpy as np, pandas as pd\narr = np.arange(100000, dtype='float64') / 7\n"
    "df = pd.DataFrame({'a': arr[:1000], 'b': ['row%d' % i for i in range(1000)]})",
    "   \n",
    "raise ValueError('boom')",
    "pathlib.Path('b.bin').unlink()\nx = 3\ndef triple(v):\n    return 3 * v",
    "print(json.dumps({'x': x, 'triple': triple(5)}))",
]


def run_notebook(directory, sources: list[str]) -> nbformat.NotebookNode:
    notebook = new_notebook(cells=[new_code_cell(source) for source in sources])
    client = NotebookClient(notebook, timeout=60, kernel_name="python3", allow_errors=True,
                            resources={"metadata": {"path": str(directory)}})
    client.execute()
    return notebook


def stdout_of(cell) -> str:
    return "".join(o.get("text", "") for o in cell.outputs if o.get("name") == "stdout")


def test_every_cell_snapshotted_then_files_and_variables_come_back(kernel_env):
    ws = kernel_env
    mnt = ws.mount()
    executed = run_notebook(mnt, CELLS)
    assert json.loads(stdout_of(executed.cells[5])) == {"x": 3, "triple": 15}
    warnings = [o["text"] for c in executed.cells for o in c.outputs if o.get("name") == "stderr"]
    assert warnings == ["cowfs: squares will not come back with %cowfs restore: generator cannot be saved "
                        "(TypeError: cannot pickle 'generator' object)\n"], \
        "the hook adds nothing to the cells' output but one line for a variable it cannot save"

    ws.cli("snap", "--wait", str(mnt))
    runs = json.loads(ws.cli("log", "--cells", "--json").stdout)[::-1]
    by_line = {run["first_line"]: run for run in runs}
    assert by_line["raise ValueError('boom')"]["success"] is False
    assert "ValueError" in by_line["raise ValueError('boom')"]["error"]
    assert by_line["import json, pathlib"]["success"] is True
    assert {run["variables"] for run in runs} == {"complete"}, "once durable, every cell's variables are on disk"
    assert [r["execution_count"] for r in runs if r["first_line"]][:2] == [1, 2]
    unlink_run = by_line["pathlib.Path('b.bin').unlink()"]

    blamed = json.loads(ws.cli("blame", str(mnt / "b.bin"), "--json").stdout)
    assert [b["change"] for b in blamed] == ["created", "deleted"]
    assert blamed[1]["id"] == unlink_run["after"]

    before = unlink_run["before"]
    back = ws.mount(before, name="back")
    assert (back / "a.txt").read_text() == "two"
    assert (back / "b.bin").read_bytes() == bytes(range(256)) * 400

    restored = run_notebook(back, [f"%cowfs restore {before}",
                                   "print(json.dumps({'x': x, 'data': data, 'has_triple': 'triple' in dir()}))",
                                   "print(bool((arr == np.arange(100000, dtype='float64') / 7).all()), "
                                   "df.shape, df['b'].iloc[999], float(df['a'].sum()) == float(arr[:1000].sum()))"])
    report = stdout_of(restored.cells[0])
    assert "squares: not saved: generator" in report  # what cannot come back is listed, with why
    assert json.loads(stdout_of(restored.cells[1])) == {"x": 2, "data": {"k": [1, 2, 3]}, "has_triple": False}
    assert stdout_of(restored.cells[2]).strip() == "True (1000, 2) row999 True"  # numpy and pandas

    after = run_notebook(back, [f"%cowfs restore {unlink_run['after']}", "print(triple(7))"])
    assert stdout_of(after.cells[1]).strip() == "21"


def test_hook_survives_a_missing_daemon_and_a_cwd_outside_mounts(kernel_env, tmp_path):
    outside = tmp_path / "plain"
    outside.mkdir()
    executed = run_notebook(outside, ["y = 41", "y += 1\nprint(y)", "print('still fine')"])
    assert stdout_of(executed.cells[1]).strip() == "42"
    warnings = [o["text"] for c in executed.cells for o in c.outputs if o.get("name") == "stderr"]
    assert len(warnings) == 1 and "not inside a cowfs mount" in warnings[0]


def test_unchanged_cells_cost_nothing(kernel_env):
    ws = kernel_env
    mnt = ws.mount()
    run_notebook(mnt, ["a = 1", "1 + 1", "2 + 2"])
    snapshots = json.loads(ws.cli("log", "--json").stdout)
    repeated = [s for s in snapshots if s["same_as"]]
    assert repeated, "snapshots with nothing changed in between share their epoch"
    assert all(s["bytes_added"] == 0 for s in repeated)


def test_open_a_cell_and_the_first_kernel_there_has_its_variables(kernel_env):
    """Issue 12's `cowfs open`: the files and the variables of a moment, with no magic typed."""
    ws = kernel_env
    mnt = ws.mount()
    run_notebook(mnt, ["import pathlib\nrows = [1, 2, 3]\npathlib.Path('out.txt').write_text('first')",
                       "rows.append(4)\npathlib.Path('out.txt').write_text('second')"])
    ws.cli("snap", "--wait", str(mnt))
    runs = json.loads(ws.cli("log", "--cells", "--json").stdout)
    second = next(r for r in runs if r["first_line"] == "rows.append(4)")
    opened = ws.cli("open", second["before"])
    there = mnt.parent / f"mnt-at-{second['before'].lstrip('@')}"
    ws.mounts.append(there)
    assert f"restores the variables of {second['before']}" in opened.stdout
    assert (there / "out.txt").read_text() == "first"
    first_kernel = run_notebook(there, ["print(rows)"])
    assert stdout_of(first_kernel.cells[0]).strip() == "[1, 2, 3]"
    assert not (there / ".cowfs" / "restore-on-start.json").exists(), "only the first kernel restores"
    later_kernel = run_notebook(there, ["print('rows' in dir())"])
    assert stdout_of(later_kernel.cells[0]).strip() == "False"
