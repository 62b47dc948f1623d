"""The LMDB key layout: one place that says how every record is named and encoded.

All integers are big-endian so that LMDB's bytewise order is numeric order.

Versioned records (inodes, directory entries, xattrs, file blocks) are keyed
``branch:u32 | owner:u64 | name | inv_epoch:u64`` where ``inv_epoch = EPOCH_MAX - epoch``.
Inverting the epoch makes the newest version of a name sort first, so one cursor
``set_range(branch|owner|name|inv(e))`` lands on the newest version at or below epoch ``e``.

``name`` must be prefix-free within one owner, or the versions of two names could interleave:
  * inodes: empty (one record per inode and epoch);
  * directory entries and xattrs: the name bytes followed by NUL (Linux names never hold NUL);
  * file blocks: the block index as u64.

Versioned values carry one leading marker byte: ``LIVE`` then the payload, or nothing at all
for a tombstone (a deletion that hides older versions and the parent branch's record).
"""

from __future__ import annotations

import struct

EPOCH_MAX = 2**64 - 1
EPOCH_BYTES = 8
LIVE = b"\x01"
TOMBSTONE = b""

U32 = struct.Struct(">I")
U64 = struct.Struct(">Q")
BRANCH_OWNER = struct.Struct(">IQ")

# Named databases of the one LMDB environment, and what each maps.
DB_META = b"meta"  # ascii name -> value (format version, counters, store statistics)
DB_BRANCHES = b"branches"  # branch id u32 -> BranchRecord JSON
DB_BRANCH_NAMES = b"branch_names"  # branch name utf-8 -> branch id u32
DB_SNAPSHOTS = b"snapshots"  # snapshot id ascii -> SnapshotRecord JSON
DB_INODES = b"inodes"  # versioned: owner = inode, name empty -> packed InodeAttrs (+ symlink target)
DB_DIRENTS = b"dirents"  # versioned: owner = directory inode, name = entry name NUL -> child inode u64
DB_XATTRS = b"xattrs"  # versioned: owner = inode, name = attribute name NUL -> value bytes
DB_BLOCKS = b"blocks"  # versioned: owner = inode, name = block index u64 -> chunk hash (32 bytes)
DB_CHUNKS = b"chunks"  # chunk hash (32 bytes) -> ChunkLocation (pack, offset, stored and raw length)
# chunk hash -> gc round u64: chunks that a commit re-used (deduplicated against) during that
# garbage-collection round, so gc never deletes a chunk that became referenced while it scanned.
DB_RECENT_REFS = b"recent_refs"
# branch u32 | inode u64 -> empty: inodes whose last name went while they were still open.
# The daemon deletes them when the kernel forgets them; one killed first sweeps them at start.
DB_ORPHANS = b"orphans"
# chunk hash -> RemoteChunk: chunks of a lazily mounted remote snapshot that this store does not
# hold; they are read through the bounded cache under remote-cache/<remote>/chunks/.
DB_REMOTE_CHUNKS = b"remote_chunks"
# pack id u32 -> empty: packs the flusher appended chunks to uncompressed because compressing
# them would have held up a writer; a daemon compresses them when idle, `cowfs gc` when it runs
# (fs/recompress.py).
DB_UNCOMPRESSED_PACKS = b"uncompressed_packs"
VERSIONED_DBS = (DB_INODES, DB_DIRENTS, DB_XATTRS, DB_BLOCKS)
ALL_DBS = (DB_META, DB_BRANCHES, DB_BRANCH_NAMES, DB_SNAPSHOTS, DB_INODES, DB_DIRENTS,
           DB_XATTRS, DB_BLOCKS, DB_CHUNKS, DB_RECENT_REFS, DB_ORPHANS, DB_REMOTE_CHUNKS,
           DB_UNCOMPRESSED_PACKS)
# Tables newer versions added: a store opened read-only may not have them yet (they are made at
# the first writable open), and then reads as if they were empty.
OPTIONAL_DBS = (DB_REMOTE_CHUNKS, DB_UNCOMPRESSED_PACKS)


def inverted(epoch: int) -> bytes:
    return U64.pack(EPOCH_MAX - epoch)


def epoch_of(key: bytes) -> int:
    return EPOCH_MAX - U64.unpack_from(key, len(key) - EPOCH_BYTES)[0]


def owner_prefix(branch: int, owner: int) -> bytes:
    return BRANCH_OWNER.pack(branch, owner)


def versioned_key(branch: int, owner: int, name: bytes, epoch: int) -> bytes:
    return BRANCH_OWNER.pack(branch, owner) + name + inverted(epoch)


def entry_name(name: bytes) -> bytes:
    """Directory entry and xattr names end in NUL so that no name is a prefix of another."""
    return name + b"\x00"


def name_of_entry(encoded: bytes) -> bytes:
    return encoded[:-1]


def block_name(index: int) -> bytes:
    return U64.pack(index)
