"""Plain records stored in the index, with their byte encodings."""

from __future__ import annotations

import json
import stat
import struct
from dataclasses import asdict, dataclass, field, fields

_INODE = struct.Struct(">IIIIQqqqQ")
_CHUNK = struct.Struct(">IQII")


@dataclass(frozen=True)
class InodeAttrs:
    """What ``stat`` shows of one inode at one epoch; symlinks also carry their target."""

    mode: int
    uid: int
    gid: int
    nlink: int
    size: int
    atime_ns: int
    mtime_ns: int
    ctime_ns: int
    rdev: int = 0
    target: bytes = b""

    def encode(self) -> bytes:
        return _INODE.pack(self.mode, self.uid, self.gid, self.nlink, self.size, self.atime_ns,
                           self.mtime_ns, self.ctime_ns, self.rdev) + self.target

    @classmethod
    def decode(cls, raw: bytes) -> "InodeAttrs":
        fields = _INODE.unpack_from(raw)
        return cls(*fields, target=bytes(raw[_INODE.size:]))

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.mode)

    @property
    def is_reg(self) -> bool:
        return stat.S_ISREG(self.mode)

    @property
    def is_symlink(self) -> bool:
        return stat.S_ISLNK(self.mode)

    def changed(self, **changes: int | bytes) -> "InodeAttrs":
        if not changes.keys() <= _ATTR_FIELDS:
            raise TypeError(f"InodeAttrs has no field {sorted(changes.keys() - _ATTR_FIELDS)}")
        return _built({**self.__dict__, **changes})


# Most FUSE requests that change something change attributes, and ``dataclasses.replace`` on a
# frozen dataclass costs 2.8 µs (it introspects the fields, then sets each through
# object.__setattr__) where filling a new instance's __dict__ costs 1.1 µs.
_ATTR_FIELDS = frozenset(f.name for f in fields(InodeAttrs))


def _built(values: dict) -> InodeAttrs:
    attrs = object.__new__(InodeAttrs)
    attrs.__dict__.update(values)
    return attrs


@dataclass(frozen=True)
class ChunkLocation:
    """Where a chunk's compressed bytes sit: pack file, offset of the payload, lengths."""

    pack: int
    offset: int
    stored_len: int
    raw_len: int

    def encode(self) -> bytes:
        return _CHUNK.pack(self.pack, self.offset, self.stored_len, self.raw_len)

    @classmethod
    def decode(cls, raw: bytes) -> "ChunkLocation":
        return cls(*_CHUNK.unpack(raw))


@dataclass(frozen=True)
class RemoteChunk:
    """Where a chunk this store does not hold sits on a remote: the remote's name (its entry in
    remotes.json), the pack object and the chunk's place in it."""

    remote: str
    pack: str
    location: ChunkLocation  # pack field unused (0): remote packs are named, not numbered

    def encode(self) -> bytes:
        return self.location.encode() + f"{self.remote}\0{self.pack}".encode()

    @classmethod
    def decode(cls, raw: bytes) -> "RemoteChunk":
        remote, _, pack = raw[_CHUNK.size:].decode().partition("\0")
        return cls(remote, pack, ChunkLocation.decode(raw[:_CHUNK.size]))


@dataclass(frozen=True)
class BranchRecord:
    """A line of history. ``head`` is the epoch live writes go to; ``parent`` is the
    ``(branch, epoch)`` it was forked from, whose records it sees until it writes its own."""

    id: int
    name: str
    head: int
    parent: tuple[int, int] | None
    created: float
    source_snapshot: str | None = None
    bytes_since_snapshot: int = 0

    def encode(self) -> bytes:
        return json.dumps(asdict(self)).encode()

    @classmethod
    def decode(cls, raw: bytes) -> "BranchRecord":
        data = json.loads(raw)
        parent = data.pop("parent")
        return cls(parent=tuple(parent) if parent else None, **data)


@dataclass(frozen=True)
class SnapshotRecord:
    """A frozen ``(branch, epoch)``: everything written on the branch at or below ``epoch``.

    ``durable`` turns true once every byte it holds is committed to packs and index.
    ``meta`` holds what the caller attached (the kernel extension puts the cell there).
    Several snapshots may share one epoch when nothing changed between them."""

    id: int
    branch: int
    epoch: int
    created: float
    label: str = ""
    meta: dict = field(default_factory=dict)
    bytes_added: int = 0
    durable: bool = False
    pinned: bool = False
    same_as: int | None = None  # set when nothing changed since that snapshot (same epoch)
    changed_inodes: list[int] = field(default_factory=list)  # changed in the epoch it closed (capped)
    changed_count: int = 0  # how many changed, even beyond the cap

    @property
    def name(self) -> str:
        return format_snapshot_id(self.id)

    def encode(self) -> bytes:
        return json.dumps(asdict(self)).encode()

    @classmethod
    def decode(cls, raw: bytes) -> "SnapshotRecord":
        return cls(**json.loads(raw))


def format_snapshot_id(number: int) -> str:
    """Snapshots are numbered store-wide; ``@12`` reads well in logs and never collides."""
    return f"@{number}"
