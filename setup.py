"""Only what pyproject.toml cannot say.

- The optional C hot path of the namespace tracking. If it cannot be built (no compiler or
  Python headers), cowfs installs without it and tracks names in pure Python, correctly but
  slowing loops in notebook code several times.
- Where Jupyter looks for the Cell history panel: the prebuilt JupyterLab extension (built by
  `scripts/install.sh` with the JupyterLab tooling into cli/lab/labextension, and carried by
  a wheel, so its users need no node) and the config file that turns the server extension on.
"""

from pathlib import Path

from setuptools import Extension, setup

HERE = Path(__file__).parent
PANEL = Path("cli/lab/labextension")


def panel_files() -> list[tuple[str, list[str]]]:
    files: dict[str, list[str]] = {}
    if (HERE / PANEL / "package.json").is_file():
        for path in sorted((HERE / PANEL).rglob("*")):
            if path.is_file():
                relative = path.relative_to(HERE)
                target = Path("share/jupyter/labextensions/cowfs-lab") / relative.parent.relative_to(PANEL)
                files.setdefault(str(target), []).append(str(relative))
    files["etc/jupyter/jupyter_server_config.d"] = ["cli/lab/jupyter-config/cowfs.json"]
    return sorted(files.items())


setup(ext_modules=[Extension("cowfs.cli.kernel._tracking", ["cli/kernel/_tracking.c"], optional=True)],
      data_files=panel_files())
