"""The JupyterLab side of cowfs: a jupyter-server extension (REST under the server's base URL,
behind the server's own login and XSRF checks) and the Cell history panel it serves.

Jupyter finds the server extension through ``_jupyter_server_extension_points``; the config
file that pip installs into ``etc/jupyter/jupyter_server_config.d`` turns it on, and the
prebuilt panel is installed into ``share/jupyter/labextensions/cowfs-lab``."""

from __future__ import annotations

from typing import Any


def _jupyter_server_extension_points() -> list[dict[str, str]]:
    return [{"module": "cowfs.cli.lab"}]


def _jupyter_labextension_paths() -> list[dict[str, str]]:
    return [{"src": "labextension", "dest": "cowfs-lab"}]


def _load_jupyter_server_extension(server_app: Any) -> None:
    from cowfs.cli.lab.handlers import install_handlers

    install_handlers(server_app.web_app)
    server_app.log.info("cowfs: the Cell history panel's API is at %scowfs/", server_app.web_app.settings["base_url"])
