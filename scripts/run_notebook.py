"""Execute a notebook headless in its own directory, as papermill or nbconvert would.

Used by the demo: the kernel loads cowfs's extension through `cowfs kernel install`,
so every cell is snapshotted exactly as it would be in JupyterLab.
"""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat
from nbclient import NotebookClient


def main(path: str) -> int:
    notebook_file = Path(path).resolve()
    notebook = nbformat.read(notebook_file, as_version=4)
    client = NotebookClient(notebook, timeout=120, kernel_name="python3", allow_errors=True,
                            resources={"metadata": {"path": str(notebook_file.parent)}})
    client.execute()
    nbformat.write(notebook, notebook_file)
    print(f"executed {len(notebook.cells)} cells of {notebook_file}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
