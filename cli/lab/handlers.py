"""REST handlers of the Cell history panel. Each one checks the server's login (and, for
POST, its XSRF token, as every jupyter-server API does), then runs a blocking function of
``timeline`` in a thread so the server keeps serving meanwhile.

    GET  cowfs/cells?path=NB&offset=0&limit=100   one page of the notebook's cells, newest first
    GET  cowfs/changes?path=NB&after=@N[&before=@M]   what that cell changed, with small text diffs
    POST cowfs/open   {"path": NB, "snapshot": "@N"}   mount @N as a new branch; the notebook there
                      (and, when the branch is outside this server's root, a server started in it)
    POST cowfs/pin    {"path": NB, "snapshots": [...], "pinned": true}
    POST cowfs/label  {"path": NB, "snapshot": "@N", "label": "before the SVM"}
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any, Callable

from jupyter_core.paths import jupyter_runtime_dir
from jupyter_server.base.handlers import APIHandler
from jupyter_server.utils import url_path_join
from tornado import web

from cowfs.cli.client import DaemonError
from cowfs.cli.lab import branch_server, timeline
from cowfs.fs.errors import StoreError


class _TimelineHandler(APIHandler):
    async def answer(self, work: Callable[[timeline.Workspace], dict], path: str | None) -> None:
        root = self.settings["server_root_dir"]

        def run() -> dict:
            return work(timeline.locate(root, path or ""))

        try:
            reply = await asyncio.to_thread(run)
        except timeline.NotInMount as exc:
            reply = {"in_workspace": False, "message": str(exc)}
        except (timeline.BadRequest, StoreError, DaemonError) as exc:
            self.set_status(400)
            reply = {"message": str(exc)}
        else:
            reply = {"in_workspace": True, **reply}
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(reply))

    def body(self) -> dict[str, Any]:
        try:
            body = json.loads(self.request.body or b"{}")
        except ValueError:
            raise web.HTTPError(400, "the request body is not JSON") from None
        if not isinstance(body, dict):
            raise web.HTTPError(400, "the request body is not a JSON object")
        return body

    def int_argument(self, name: str, default: int) -> int:
        try:
            return int(self.get_argument(name, str(default)))
        except ValueError:
            raise web.HTTPError(400, f"{name} must be a number") from None


class CellsHandler(_TimelineHandler):
    @web.authenticated
    async def get(self) -> None:
        offset, limit = self.int_argument("offset", 0), self.int_argument("limit", 100)
        await self.answer(lambda ws: timeline.cells(ws, offset, limit), self.get_argument("path", ""))


class ChangesHandler(_TimelineHandler):
    @web.authenticated
    async def get(self) -> None:
        before, after = self.get_argument("before", None), self.get_argument("after", "")
        await self.answer(lambda ws: timeline.changes(ws, before, after), self.get_argument("path", ""))


class OpenHandler(_TimelineHandler):
    @web.authenticated
    async def post(self) -> None:
        body = self.body()
        ip, host = self.settings["serverapp"].ip, self.request.host_name

        def open_there(workspace: timeline.Workspace) -> dict:
            opened = timeline.open_branch(workspace, str(body.get("snapshot", "")))
            if opened["path"] is None:  # outside what this server serves: one of its own
                try:
                    opened |= branch_server.start(Path(opened["directory"]), Path(opened["notebook"]), ip, host,
                                                  Path(jupyter_runtime_dir()))
                except branch_server.ServerStartError as exc:
                    raise timeline.BadRequest(f"{opened['snapshot']} is mounted at {opened['directory']}, "
                                              f"but {exc}") from None
            return opened

        await self.answer(open_there, body.get("path"))


class PinHandler(_TimelineHandler):
    @web.authenticated
    async def post(self) -> None:
        body = self.body()
        snapshots = [str(s) for s in body.get("snapshots", []) if s][:2]
        await self.answer(lambda ws: timeline.set_pin(ws, snapshots, bool(body.get("pinned", True))),
                          body.get("path"))


class LabelHandler(_TimelineHandler):
    @web.authenticated
    async def post(self) -> None:
        body = self.body()
        await self.answer(lambda ws: timeline.set_label(ws, str(body.get("snapshot", "")),
                                                        str(body.get("label", ""))), body.get("path"))


def install_handlers(web_app: Any) -> None:
    base = url_path_join(web_app.settings["base_url"], "cowfs")
    routes = {"cells": CellsHandler, "changes": ChangesHandler, "open": OpenHandler, "pin": PinHandler,
              "label": LabelHandler}
    web_app.add_handlers(".*$", [(url_path_join(base, name), handler) for name, handler in routes.items()])
