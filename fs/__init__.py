"""The cowfs storage engine: chunks, packs, the LMDB index, versioned inodes and snapshots.

Nothing in this package knows about FUSE or trio, so every rule of the store can be
tested by calling it directly.
"""
