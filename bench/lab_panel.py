"""The Cell history panel with a long history: how long the panel takes to show a notebook's
cells when the log holds --cells of them, to jump to the oldest, to show a cell's changes, and
from "Open before" on a cell to an idle kernel in the new tab. A real `jupyter lab` on a real
mount, in Debian's Chromium under Playwright (what the tests use).

    python bench/lab_panel.py [--cells 10000] [--reps 3]

The log is written with the engine before the mount (each cell rewrites one file, one in three
writes nothing), then one real cell runs through the UI so "Open before" has variables to restore.
There is no native or passthrough column: the panel exists only on cowfs.
Needs root, /dev/fuse, Chromium and the `lab` extra (scripts/install.sh installs them).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "bench"))

from lab_server import CHROMIUM, CHROMIUM_ARGS, start_lab, write_notebook  # noqa: E402
from run import cowfs  # noqa: E402


def write_log(store: Path, notebook: Path, cells: int) -> None:
    """``cells`` executed cells of ``notebook``, as the kernel extension records them."""
    from cowfs.fs.store import Store
    from cowfs.fs.tree import Tree

    opened = Store.open(store)
    try:
        tree = Tree(opened, 1)
        data, _ = tree.create(1, b"data.txt", 0o100644, 0, 0)
        for n in range(1, cells + 1):
            meta = {"kind": "cell", "notebook": str(notebook), "cell_id": f"c{n}", "source_hash": f"h{n}",
                    "first_line": f"x = {n}", "vars": None}
            tree.snapshot(f"before: x = {n}", {**meta, "phase": "before"})
            if n % 3:
                tree.write(data, 0, b"%08d\n" % n)
            tree.snapshot(f"after [{n}] ok: x = {n}", {**meta, "phase": "after", "execution_count": n,
                                                       "success": True, "error": None})
        tree.flush()
    finally:
        opened.close()


def wait_for_kernel(page) -> None:
    page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=120_000)
    page.locator(".jp-StatusBar-Widget", has_text="| Idle").first.wait_for(timeout=120_000)


def measure(server, reps: int) -> dict[str, list[float]]:
    from playwright.sync_api import sync_playwright

    times: dict[str, list[float]] = {}

    def note(name: str, started: float) -> None:
        times.setdefault(name, []).append(time.monotonic() - started)

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            for rep in range(reps):
                context = browser.new_context(viewport={"width": 1400, "height": 900})
                page = context.new_page()
                page.goto(f"{server.url}/lab/tree/work/nb.ipynb?token={server.token}")
                wait_for_kernel(page)
                if rep == 0:
                    page.locator(".jp-Notebook .jp-Cell").nth(0).locator(".cm-content").click()
                    page.keyboard.press("Shift+Enter")
                    page.locator(".jp-InputPrompt", has_text="[1]").first.wait_for(timeout=60_000)
                panel = page.locator("#cowfs-cell-history")
                started = time.monotonic()
                page.locator(".jp-SideBar [data-id='cowfs-cell-history']").click()
                panel.locator(".cowfs-row[data-after]").first.wait_for(timeout=60_000)
                note("panel shows its first rows", started)
                started = time.monotonic()
                panel.locator(".cowfs-changes .cowfs-changes-title").wait_for(timeout=60_000)
                note("then the newest cell's changes", started)
                panel.locator(".cowfs-list").focus()
                started = time.monotonic()
                page.keyboard.press("End")
                panel.locator(".cowfs-row[data-after='@2']").wait_for(timeout=60_000)  # the first cell's
                note("End: the oldest cell shown", started)
                page.keyboard.press("Home")
                panel.locator(".cowfs-row[aria-selected='true']", has_text="print").wait_for(timeout=60_000)
                started = time.monotonic()
                with context.expect_page() as opened_info:
                    panel.locator("button", has_text="Open before").click()
                opened = opened_info.value
                wait_for_kernel(opened)
                note("Open before -> idle kernel in the new tab", started)
                context.close()
        except Exception:
            for number, tab in enumerate(browser.contexts[-1].pages if browser.contexts else []):
                tab.screenshot(path=f"/tmp/lab_panel_failed_{number}.png")
            raise
        finally:
            browser.close()
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cells", type=int, default=10000)
    parser.add_argument("--reps", type=int, default=3)
    options = parser.parse_args()
    with tempfile.TemporaryDirectory(dir="/var/tmp") as scratch:
        root = Path(scratch)
        store, mnt = root / "store", root / "work"
        env_root = root / "home"
        env_root.mkdir()
        cowfs("init", store=store)
        started = time.monotonic()
        write_log(store, mnt / "nb.ipynb", options.cells)
        print(f"wrote {options.cells} cells with the engine in {time.monotonic() - started:.1f} s")
        import os

        os.environ.update(IPYTHONDIR=str(env_root / "ipython"), XDG_CONFIG_HOME=str(env_root / "config"),
                          COWFS_STORE=str(store))
        cowfs("kernel", "install", store=store)
        cowfs("mount", str(mnt), store=store)
        server = None
        try:
            write_notebook(mnt / "nb.ipynb", ["print('state:', open('data.txt').read().strip())"])
            server = start_lab(root, root / "jupyter")
            api = {}
            for name in ("cold", "warm"):
                started = time.monotonic()
                status, page = server.api("GET", "cowfs/cells?path=work/nb.ipynb&offset=0&limit=100")
                api[name] = time.monotonic() - started
                assert status == 200 and page["total"] == options.cells, page
            times = measure(server, options.reps)
        finally:
            if server is not None:
                server.stop()
            for opened in sorted(root.glob("work-at-*")) + [mnt]:
                subprocess.run([sys.executable, "-m", "cowfs.cli.main", "umount", str(opened)], capture_output=True)
    print(f"\nCell history panel, {options.cells} cells in the log, {options.reps} runs (seconds; median, max)")
    print(f"{'step':45} {'median':>8} {'max':>8}")
    print(f"{'API, first page of 100 (server cache cold)':45} {api['cold']:8.3f} {api['cold']:8.3f}")
    print(f"{'API, first page of 100 (warm)':45} {api['warm']:8.3f} {api['warm']:8.3f}")
    for name, values in times.items():
        print(f"{name:45} {statistics.median(values):8.3f} {max(values):8.3f}")
    print(json.dumps({"cells": options.cells, "api": api, "browser": times}))


if __name__ == "__main__":
    main()
