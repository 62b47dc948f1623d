"""Making every IPython kernel of this user load the extension, and undoing it.

An IPython startup file is the least intrusive hook: it applies to every kernel (JupyterLab,
classic notebook, VS Code, nbclient, papermill) and is removed by deleting one file.
"""

from __future__ import annotations

from pathlib import Path

STARTUP_NAME = "00-cowfs.py"
STARTUP_CODE = '''# Installed by `cowfs kernel install`; `cowfs kernel uninstall` removes it.
# Snapshots the cowfs workspace before and after every cell; does nothing outside a mount.
try:
    get_ipython().extension_manager.load_extension("cowfs")
except Exception as _cowfs_error:  # never stop a kernel from starting
    import sys as _sys
    print(f"cowfs: extension not loaded ({_cowfs_error})", file=_sys.stderr)
'''


def startup_file() -> Path:
    from IPython.paths import get_ipython_dir

    return Path(get_ipython_dir()) / "profile_default" / "startup" / STARTUP_NAME


def install() -> Path:
    path = startup_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(STARTUP_CODE)
    return path


def uninstall() -> Path | None:
    path = startup_file()
    if path.exists():
        path.unlink()
        return path
    return None
