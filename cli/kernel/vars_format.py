"""The layout of saved variables in a workspace, shared by the saver and the loader.

``.cowfs/vars/<session>/manifest.json`` (format 2)::

    {"format": 2,
     "names":  {name: {"group": gid} | {"module": "numpy"} | {"error": "why it was not saved"}},
     "groups": {gid: {"names": [...], "types": [...],
                      "inline": base64 skeleton | "skeleton": file, "skeleton_hash": hex,
                      "buffers": [{"file": name, "size": bytes}, ...]}}}

A group's skeleton is a cloudpickle (protocol 5) of the tuple of its values in name order;
its buffers, in order, are the out-of-band buffers that pickle hands back to ``loads``.
Format 1 (no "format" key) mapped each name to its own inline or file pickle.
"""

from __future__ import annotations

import blake3

VARS_ROOT = ".cowfs/vars"
# Left by `cowfs open` in the branch it mounts: the first kernel started there restores it.
RESTORE_ON_START = ".cowfs/restore-on-start.json"
MANIFEST = "manifest.json"
FORMAT = 2
HASH_BLOCK = 256 * 1024  # two engine blocks: a changed value rewrites at most this much
INLINE_BYTES = 2048  # skeletons this small live in the manifest: one file write per cell


def group_id(names: tuple[str, ...]) -> str:
    return blake3.blake3("\0".join(names).encode()).hexdigest()[:16]


def skeleton_file(gid: str) -> str:
    return f"{gid}.pkl"
