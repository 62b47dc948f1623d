"""A snapshot as content-addressed objects, for stores that share nothing but a bucket.

Inode numbers, branches and epochs mean something only inside one store, so a snapshot leaves
it as a Merkle tree, as restic and git do: one object per directory (its entries with their
attributes; a file lists the digests of its 128 KiB blocks, a directory the digest of its own
object), named by the blake3 digest of its canonical JSON. Objects are chunks like any other:
an unchanged directory is the same object in every snapshot, so it is sent once.
"""

from __future__ import annotations

import json
import os
import stat
from dataclasses import dataclass, field
from typing import Callable, Iterator

from cowfs.fs.chunks import SealedChunk, seal
from cowfs.fs.keys import U64
from cowfs.fs.store import ROOT_INODE
from cowfs.fs.tree import Tree

FORMAT = 1


@dataclass
class SnapshotObjects:
    """What a snapshot is made of: its tree objects (sealed), and the data chunks they name, in
    the order the files hold them (a dict used as an ordered set): a push keeps that order in
    its packs, so a lazy read of a file finds its blocks side by side, one ranged GET for many."""

    root: bytes
    trees: dict[bytes, SealedChunk] = field(default_factory=dict)
    data: dict[bytes, None] = field(default_factory=dict)


def _name(raw: bytes) -> str:
    return os.fsdecode(raw)  # surrogateescape: any byte string survives JSON and comes back


def snapshot_objects(tree: Tree) -> SnapshotObjects:
    """The objects of the (committed) tree a snapshot view sees."""
    objects = SnapshotObjects(root=b"")
    objects.root = _directory_object(tree, ROOT_INODE, objects)
    return objects


def _directory_object(tree: Tree, ino: int, objects: SnapshotObjects) -> bytes:
    entries = []
    for name, child in tree.listdir(ino):
        attrs = tree.getattr(child)
        entry = {"name": _name(name), "mode": attrs.mode, "uid": attrs.uid, "gid": attrs.gid,
                 "atime_ns": attrs.atime_ns, "mtime_ns": attrs.mtime_ns, "ctime_ns": attrs.ctime_ns}
        if attrs.is_dir:
            entry["tree"] = _directory_object(tree, child, objects).hex()
        elif attrs.is_symlink:
            entry["target"] = attrs.target.hex()
        elif attrs.is_reg:
            blocks = sorted((U64.unpack(name)[0], digest) for name, digest in tree.block_digests(child).items())
            objects.data.update((digest, None) for _, digest in blocks)
            entry |= {"size": attrs.size, "blocks": [[index, digest.hex()] for index, digest in blocks]}
        else:
            entry["rdev"] = attrs.rdev
        if attrs.nlink > 1 and not attrs.is_dir:
            entry["link_group"] = child  # only equality matters: names of one inode
        xattrs = {_name(key): tree.getxattr(child, key).hex() for key in tree.listxattr(child)}
        if xattrs:
            entry["xattrs"] = xattrs
        entries.append(entry)
    body = json.dumps({"format": FORMAT, "entries": entries}, sort_keys=True, separators=(",", ":")).encode()
    sealed = seal(body)
    objects.trees[sealed.digest] = sealed
    return sealed.digest


def decode_tree(raw: bytes) -> list[dict]:
    document = json.loads(raw)
    if document.get("format") != FORMAT:
        raise ValueError(f"tree object of format {document.get('format')!r}; this cowfs reads {FORMAT}")
    return document["entries"]


def tree_digests(root: bytes, fetch_tree: Callable[[bytes], bytes]) -> Iterator[tuple[str, bytes]]:
    """Walk the objects under ``root``: ("tree" | "data", digest) for everything a copy needs."""
    yield "tree", root
    for entry in decode_tree(fetch_tree(root)):
        if "tree" in entry:
            yield from tree_digests(bytes.fromhex(entry["tree"]), fetch_tree)
        for _, digest in entry.get("blocks", ()):
            yield "data", bytes.fromhex(digest)


def materialize(tree: Tree, root: bytes, fetch_tree: Callable[[bytes], bytes]) -> int:
    """Build the tree under ``root`` in an empty, writable ``tree``; returns the files made.

    Every data chunk must be in the store already (a pull stores the missing ones first, as
    they came): files take their blocks by digest, so nothing is read, hashed or compressed
    again."""
    links: dict[int, int] = {}
    return _fill(tree, ROOT_INODE, root, fetch_tree, links)


def _fill(tree: Tree, parent: int, digest: bytes, fetch_tree, links: dict[int, int]) -> int:
    made = 0
    for entry in decode_tree(fetch_tree(digest)):
        name = os.fsencode(entry["name"])
        group = entry.get("link_group")
        if group is not None and group in links:
            tree.link(links[group], parent, name)
            continue
        target = bytes.fromhex(entry.get("target", ""))
        ino, _ = tree.create(parent, name, entry["mode"], entry["uid"], entry["gid"], entry.get("rdev", 0), target)
        if group is not None:
            links[group] = ino
        if "tree" in entry:
            made += _fill(tree, ino, bytes.fromhex(entry["tree"]), fetch_tree, links)
        if stat.S_ISREG(entry["mode"]):
            tree.adopt_blocks(ino, [(index, bytes.fromhex(block)) for index, block in entry["blocks"]], entry["size"])
            made += 1
        for key, value in entry.get("xattrs", {}).items():
            tree.setxattr(ino, os.fsencode(key), bytes.fromhex(value))
        if not stat.S_ISLNK(entry["mode"]):
            tree.setattr(ino, mode=entry["mode"], atime_ns=entry["atime_ns"], mtime_ns=entry["mtime_ns"],
                         ctime_ns=entry["ctime_ns"])
    return made


__all__ = ["SnapshotObjects", "decode_tree", "materialize", "snapshot_objects", "tree_digests"]
