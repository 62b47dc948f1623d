"""The Cell history panel in a real JupyterLab, driven by a real browser (Debian's Chromium
under Playwright), on a real mount: run cells through the UI, read the panel's rows, look at
what a cell changed, and "Open before" a cell, whose new tab's kernel must hold that moment's
files and variables. Screenshots of each step go to tests/artifacts/lab-panel/."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

from conftest import needs_fuse
from lab_server import CHROMIUM, CHROMIUM_ARGS

pytestmark = needs_fuse

ARTIFACTS = Path(__file__).parent / "artifacts" / "lab-panel"


def shoot(page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"))


def wait_for_kernel(page) -> None:
    """Until the kernel has started and said it is idle (the toolbar says idle before that)."""
    page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=60_000)
    page.locator(".jp-StatusBar-Widget", has_text=re.compile(r"Python 3 \(ipykernel\) \| Idle")).first.wait_for(
        timeout=60_000)


def run_cell(page, index: int, expected_count: int) -> None:
    """Click into a cell and run it with Shift+Enter, as a user does."""
    page.locator(".jp-Notebook .jp-Cell").nth(index).locator(".cm-content").click()
    page.keyboard.press("Shift+Enter")
    prompt = page.locator(".jp-Notebook .jp-Cell").nth(index).locator(".jp-InputPrompt")
    prompt.filter(has_text=f"[{expected_count}]").wait_for(timeout=60_000)


def test_panel_shows_cells_and_opens_the_moment_before_one(lab):
    from playwright.sync_api import expect, sync_playwright

    ws, mnt, server = lab
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport={"width": 1400, "height": 900})
            page = context.new_page()
            page.goto(f"{server.url}/lab/tree/mnt/analysis.ipynb?token={server.token}")
            wait_for_kernel(page)
            page.locator(".jp-SideBar [data-id='cowfs-cell-history']").click()
            panel = page.locator("#cowfs-cell-history")
            rows = panel.locator(".cowfs-row[data-after]")
            expect(panel.locator(".cowfs-status")).to_contain_text("0 cells")
            for index in range(3):  # the panel is open: each cell's row appears as it runs
                run_cell(page, index, index + 1)
                expect(rows).to_have_count(index + 1, timeout=10_000)
            expect(page.locator(".jp-Cell").nth(2).locator(".jp-OutputArea-output")).to_contain_text("state: 2 two")
            shoot(page, "1-notebook-ran")
            expect(rows.nth(0)).to_contain_text("print('state:'")
            expect(rows.nth(1)).to_contain_text("x = 2")
            expect(rows.nth(2)).to_contain_text("import pathlib")
            expect(panel.locator(".cowfs-status")).to_contain_text("analysis.ipynb")
            expect(rows.nth(0)).to_contain_text("no change")  # the print cell wrote nothing
            expect(rows.nth(1)).to_contain_text("1 file")
            shoot(page, "2-panel-rows")

            # Keyboard: the list is a listbox; arrows move the selection and the details follow.
            rows.nth(0).click()
            page.keyboard.press("ArrowDown")
            expect(rows.nth(1)).to_have_attribute("aria-selected", "true")
            details = panel.locator(".cowfs-changes")
            expect(details.locator(".cowfs-change.cowfs-modified .cowfs-path")).to_have_text("data.txt")
            expect(details.locator(".cowfs-minus")).to_contain_text("-one")
            expect(details.locator(".cowfs-plus")).to_contain_text("+two")
            shoot(page, "3-cell-changes")

            panel.get_by_role("button", name=re.compile("^Pin")).click()
            expect(rows.nth(1)).to_contain_text("pinned")
            pinned = {r["id"] for r in json.loads(ws.cli("log", "--json").stdout) if r["pinned"]}
            assert len(pinned) == 2, "the cell's before and after snapshots"

            # JupyterLab's dark theme: the panel takes its colours from the theme.
            light = panel.evaluate("node => getComputedStyle(node).backgroundColor")
            page.locator(".lm-MenuBar-itemLabel", has_text="Settings").click()
            page.locator(".lm-Menu-itemLabel", has_text=re.compile("^Theme$")).hover()
            page.locator(".lm-Menu-itemLabel", has_text=re.compile("^JupyterLab Dark$")).click()
            expect(page.locator("body")).to_have_attribute("data-jp-theme-light", "false", timeout=20_000)
            page.locator("#jupyterlab-splash").wait_for(state="detached", timeout=20_000)
            assert panel.evaluate("node => getComputedStyle(node).backgroundColor") != light
            shoot(page, "3b-dark-theme")

            # The browser's login cookie alone does not make a POST: the server's XSRF check holds.
            forged = context.request.post(f"{server.url}/cowfs/label", data={"path": "mnt/analysis.ipynb",
                                                                              "snapshot": "@1", "label": "forged"})
            assert forged.status == 403 and "forged" not in ws.cli("log").stdout

            clicked = time.monotonic()
            with context.expect_page() as opened_info:
                panel.get_by_role("button", name=re.compile("^Open before")).click()
            opened = opened_info.value
            opened.wait_for_url(re.compile(r".*/mnt-at-\d+/analysis\.ipynb"), timeout=60_000)
            wait_for_kernel(opened)
            print(f"Open before -> a kernel there is idle: {time.monotonic() - clicked:.2f} s")
            run_cell(opened, 2, 1)  # only the print cell: its kernel starts with the variables of that moment
            expect(opened.locator(".jp-Cell").nth(2).locator(".jp-OutputArea-output")).to_contain_text(
                "state: 1 one", timeout=30_000)
            shoot(opened, "4-opened-before-cell-2")

            there = next(server.root.glob("mnt-at-*"))
            assert (there / "data.txt").read_text() == "one\n"
            assert (mnt / "data.txt").read_text() == "two\n", "the workspace itself is untouched"
        except Exception:
            for number, tab in enumerate(context.pages):
                shoot(tab, f"failed-tab-{number}")
            raise
        finally:
            browser.close()
