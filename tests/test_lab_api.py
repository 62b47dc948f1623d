"""The Cell history panel's REST API in a real jupyter server on a real mount, without a
browser: what it lists, what it refuses, and that it reaches only the notebook's own store
and branch."""

from __future__ import annotations

import json
from urllib.parse import parse_qs, quote, urlsplit
from urllib.request import urlopen

from conftest import needs_fuse
from lab_server import start_lab
from test_kernel_e2e import run_notebook

pytestmark = needs_fuse


def test_cells_are_paged_newest_first_and_pin_and_label_reach_the_store(lab, monkeypatch):
    ws, mnt, server = lab
    # A kernel under jupyter-server learns its notebook from JPY_SESSION_NAME; nbclient's does not.
    monkeypatch.setenv("JPY_SESSION_NAME", str(mnt / "analysis.ipynb"))
    run_notebook(mnt, [f"n = {i}\nopen('f{i % 2}.txt', 'w').write('v{i}')" for i in range(7)])
    path = quote("mnt/analysis.ipynb")
    status, first = server.api("GET", f"cowfs/cells?path={path}&offset=0&limit=3")
    assert status == 200 and first["in_workspace"] and first["total"] == 7 and first["branch"] == "main"
    assert [row["first_line"] for row in first["rows"]] == ["n = 6", "n = 5", "n = 4"]
    status, rest = server.api("GET", f"cowfs/cells?path={path}&offset=3&limit=100")
    assert [row["first_line"] for row in rest["rows"]] == ["n = 3", "n = 2", "n = 1", "n = 0"]
    assert all(row["files_changed"] == 1 for row in first["rows"] + rest["rows"]), "saved variables are not the user's files"

    row = first["rows"][1]
    status, changes = server.api("GET", f"cowfs/changes?path={path}&before={row['before']}&after={row['after']}")
    assert status == 200 and [(c["path"], c["kind"]) for c in changes["changes"]] == [("f1.txt", "modified")]
    assert "-v3" in changes["changes"][0]["patch"] and "+v5" in changes["changes"][0]["patch"]

    assert server.api("POST", "cowfs/pin", {"path": "mnt/analysis.ipynb", "snapshots": [row["before"], row["after"]],
                                            "pinned": True})[0] == 200
    assert server.api("POST", "cowfs/label", {"path": "mnt/analysis.ipynb", "snapshot": row["after"],
                                              "label": "before the SVM"})[0] == 200
    logged = {r["id"]: r for r in json.loads(ws.cli("log", "--json").stdout)}
    assert logged[row["before"]]["pinned"] and logged[row["after"]]["pinned"]
    assert logged[row["after"]]["label"] == "before the SVM"
    assert ws.cli("diff", "before the SVM", row["after"]).stdout == "", "the label finds the snapshot"
    status, again = server.api("GET", f"cowfs/cells?path={path}&offset=0&limit=3")
    assert again["rows"][1]["pinned"] and again["rows"][1]["label"] == "before the SVM"
    # The same from a terminal: `cowfs label`, one line when the snapshot is not there.
    assert "label removed" in ws.cli("label", row["after"], "").stdout
    assert {r["id"]: r for r in json.loads(ws.cli("log", "--json").stdout)}[row["after"]]["label"] == ""
    refused = ws.cli("label", "@999", "x", check=False)
    assert refused.returncode == 1 and "no snapshot '@999'" in refused.stderr and "Traceback" not in refused.stderr


def test_requests_stay_in_the_notebooks_mount_and_branch(lab, tmp_path):
    ws, mnt, server = lab
    first = ws.snap(mnt)
    (tmp_path / "elsewhere.ipynb").write_text("{}")
    (mnt / "escape").symlink_to("/etc")
    other = ws.mount(first["id"], name="other")
    foreign = ws.snap(other)

    def cells(path: str) -> tuple[int, dict]:
        return server.api("GET", f"cowfs/cells?path={quote(path)}")

    assert server.api("GET", "cowfs/cells?path=mnt/analysis.ipynb", token=False)[0] == 403, "the server's login"
    status, reply = cells("../../etc/passwd")
    assert status == 400 and "outside the directory this server serves" in reply["message"]
    status, reply = cells("mnt/escape/passwd")
    assert status == 400 and "outside" in reply["message"], "a symlink in the mount does not lead out"
    status, reply = cells("elsewhere.ipynb")
    assert status == 200 and reply["in_workspace"] is False and "not in a cowfs workspace" in reply["message"]
    for endpoint, body in (("label", {"snapshot": foreign["id"], "label": "x"}),
                           ("pin", {"snapshots": [foreign["id"]], "pinned": True}),
                           ("open", {"snapshot": foreign["id"]})):
        status, reply = server.api("POST", f"cowfs/{endpoint}", {"path": "mnt/analysis.ipynb", **body})
        assert status == 400 and "is not on branch main" in reply["message"], endpoint
    status, reply = server.api("GET", f"cowfs/changes?path=mnt/analysis.ipynb&after={foreign['id']}")
    assert status == 400 and "is not on branch main" in reply["message"]
    status, reply = server.api("POST", "cowfs/label", {"path": "mnt/analysis.ipynb", "snapshot": "@999", "label": "x"})
    assert status == 400 and "no snapshot '@999'" in reply["message"]
    status, reply = server.api("POST", "cowfs/label", {"path": "mnt/analysis.ipynb", "snapshot": first["id"],
                                                       "label": "two\nlines"})
    assert status == 400 and "one line" in reply["message"]
    logged = {r["id"]: r for r in json.loads(ws.cli("log", "--json").stdout)}
    assert not logged[foreign["id"]]["pinned"] and logged[foreign["id"]]["label"] == ""


def test_open_from_a_server_in_the_workspace_starts_a_server_in_the_branch(lab, tmp_path):
    """Jupyter started in the workspace cannot serve a branch mounted beside it: "Open" starts
    a server of the branch's own and gives its URL."""
    ws, mnt, _ = lab
    (mnt / "data.txt").write_text("then\n")
    then = ws.snap(mnt)
    (mnt / "data.txt").write_text("now\n")
    in_workspace = start_lab(mnt, tmp_path / "jupyter-in-workspace")
    try:
        status, opened = in_workspace.api("POST", "cowfs/open", {"path": "analysis.ipynb", "snapshot": then["id"]})
        assert status == 200 and opened["path"] is None, opened
        assert opened["directory"] == f"{mnt}-at-{then['id'].lstrip('@')}"
        page = urlsplit(opened["url"])
        assert page.hostname == "127.0.0.1" and page.path == "/lab/tree/analysis.ipynb"
        token = parse_qs(page.query)["token"][0]
        with urlopen(f"http://127.0.0.1:{page.port}/api/contents/data.txt?token={token}", timeout=30) as reply:
            assert json.loads(reply.read())["content"] == "then\n"
        with urlopen(f"http://127.0.0.1:{page.port}/api/contents/analysis.ipynb?token={token}", timeout=30) as reply:
            assert reply.status == 200
        assert (mnt / "data.txt").read_text() == "now\n"
    finally:
        in_workspace.stop()
