"""Saving a kernel's variables into the workspace after each cell, and bringing them back.

Variables are pickled (cloudpickle, so functions and classes defined in the notebook travel
too) into ``.cowfs/vars/<session>/`` at the root of the mount, one file per name, just before
the after-cell snapshot. The files are then ordinary workspace data: chunked, deduplicated
and frozen by the snapshot with the files the cell wrote. A variable whose pickle did not
change is not written again, and costs nothing in the store either way.
"""

from __future__ import annotations

import base64
import importlib
import json
import os
import secrets
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import blake3
import cloudpickle

from cowfs.fs.store import Store
from cowfs.fs.records import SnapshotRecord
from cowfs.fs.tree import Tree

VARS_ROOT = ".cowfs/vars"
MANIFEST = "manifest.json"
# Immutable values cannot change in place: the same object means the same value.
IMMUTABLE = (int, float, complex, str, bytes, bool, type(None), frozenset, range)
INLINE_BYTES = 2048  # pickles this small live in the manifest itself: one file write per cell


def new_session() -> str:
    return f"{os.getpid()}-{secrets.token_hex(3)}"


def file_name(name: str) -> str:
    return blake3.blake3(name.encode()).hexdigest()[:20] + ".pkl"


def user_variables(shell: Any) -> dict[str, Any]:
    hidden = getattr(shell, "user_ns_hidden", {})
    return {name: value for name, value in shell.user_ns.items()
            if not name.startswith("_") and name not in hidden and name not in ("In", "Out", "exit", "quit")}


@dataclass
class NamespaceSaver:
    shell: Any
    session: str = field(default_factory=new_session)
    _digests: dict[str, bytes] = field(default_factory=dict)
    _immutable_ids: dict[str, int] = field(default_factory=dict)
    _manifest: dict[str, dict] = field(default_factory=dict)
    _made_dirs: set[Path] = field(default_factory=set)

    @property
    def relative_dir(self) -> str:
        return f"{VARS_ROOT}/{self.session}"

    def save(self, mount_root: Path) -> None:
        """Write what changed: big values to their own files, small ones inline in the manifest,
        so a typical cell costs one or two small writes."""
        directory = mount_root / self.relative_dir
        if directory not in self._made_dirs:
            directory.mkdir(parents=True, exist_ok=True)
            self._made_dirs.add(directory)
        manifest: dict[str, dict] = {}
        for name, value in user_variables(self.shell).items():
            manifest[name] = self._save_one(directory, name, value)
        for gone in self._manifest.keys() - manifest.keys():
            entry = self._manifest[gone]
            if entry.get("file"):
                (directory / entry["file"]).unlink(missing_ok=True)
            self._digests.pop(gone, None)
            self._immutable_ids.pop(gone, None)
        if manifest != self._manifest:
            write_file(directory / MANIFEST, json.dumps(manifest, sort_keys=True).encode())
            self._manifest = manifest

    def _save_one(self, directory: Path, name: str, value: Any) -> dict:
        if isinstance(value, types.ModuleType):
            return {"module": value.__name__}
        if isinstance(value, IMMUTABLE) and self._immutable_ids.get(name) == id(value) and name in self._manifest:
            return self._manifest[name]
        try:
            data = cloudpickle.dumps(value, protocol=5)
        except Exception as exc:  # open files, sockets, generators, locks...
            return {"error": f"{type(value).__name__} cannot be saved ({type(exc).__name__}: {exc})"[:300]}
        digest = blake3.blake3(data).digest()
        target = file_name(name)
        if isinstance(value, IMMUTABLE):
            self._immutable_ids[name] = id(value)
        if len(data) <= INLINE_BYTES:
            self._digests.pop(name, None)
            return {"inline": base64.b64encode(data).decode(), "type": type(value).__name__}
        if self._digests.get(name) != digest:
            write_file(directory / target, data)
            self._digests[name] = digest
        return {"file": target, "type": type(value).__name__}


def write_file(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


class RestoreError(Exception):
    """The snapshot holds no saved variables, or they cannot be read."""


def load_namespace(store: Store, snapshot: SnapshotRecord) -> tuple[dict[str, Any], list[str]]:
    """The variables saved in ``snapshot``, and one line for each that could not come back."""
    session_dir = snapshot.meta.get("vars")
    if not session_dir:
        raise RestoreError(f"snapshot {snapshot.name} was not taken by a kernel that saved its variables")
    tree = Tree.at_snapshot(store, snapshot)

    def read(relative: str) -> bytes | None:
        found = tree.resolve(f"{session_dir}/{relative}".encode())
        return None if found is None else tree.read(found[0], 0, found[1].size)

    raw_manifest = read(MANIFEST)
    if raw_manifest is None:
        return {}, []
    values: dict[str, Any] = {}
    problems: list[str] = []
    for name, entry in sorted(json.loads(raw_manifest).items()):
        try:
            if "module" in entry:
                values[name] = importlib.import_module(entry["module"])
            elif "inline" in entry:
                values[name] = cloudpickle.loads(base64.b64decode(entry["inline"]))
            elif "file" in entry:
                data = read(entry["file"])
                if data is None:
                    raise RestoreError("its saved file is missing")
                values[name] = cloudpickle.loads(data)
            else:
                problems.append(f"{name}: not saved: {entry.get('error', 'unknown reason')}")
        except Exception as exc:
            problems.append(f"{name}: could not be restored ({type(exc).__name__}: {exc})")
    return values, problems
