"""The storage engine on its own: no FUSE, no daemon."""

from __future__ import annotations

import errno
import os
import stat
import threading
import time
from pathlib import Path

import lmdb
import pytest
import zstandard

from cowfs.fs import keys, versions
from cowfs.fs.errors import CorruptChunkError, FsError, StoreError
from cowfs.fs.keys import DB_DIRENTS
from conftest import corrupt_first_chunk
from cowfs.fs.chunks import digest_of, unseal
from cowfs.fs.packs import scan_pack
from cowfs.fs.parallel import HELPERS, map_shared
from cowfs.fs.store import FORMAT, ROOT_INODE, Store
from cowfs.fs.tree import BLOCK_SIZE, RENAME_EXCHANGE, RENAME_NOREPLACE, Seam, Tree

FILE = stat.S_IFREG | 0o644
DIR = stat.S_IFDIR | 0o755


def new_file(tree: Tree, name: bytes, data: bytes = b"", parent: int = ROOT_INODE) -> int:
    ino, _ = tree.create(parent, name, FILE, 0, 0)
    if data:
        tree.write(ino, 0, data)
    return ino


def test_inverted_epochs_sort_newest_first():
    older = keys.versioned_key(1, 5, b"", 3)
    newer = keys.versioned_key(1, 5, b"", 4)
    assert newer < older
    assert keys.epoch_of(newer) == 4


def test_entry_names_are_prefix_free():
    names = [b"a", b"a\x01", b"ab", b"a" * 255]
    encoded = [keys.entry_name(n) for n in names]
    for a in encoded:
        for b in encoded:
            assert a == b or not b.startswith(a)


def test_versioned_lookup_follows_epochs_tombstones_and_parents(store: Store):
    db = store.index.db(DB_DIRENTS)

    def change(txn):
        versions.put(txn, db, 1, 1, 7, b"x\0", b"v1")
        versions.put(txn, db, 1, 3, 7, b"x\0", b"v3")
        versions.put(txn, db, 1, 5, 7, b"x\0", None)
        versions.put(txn, db, 9, 1, 7, b"y\0", b"branch")

    store.index.write(change)
    with store.index.reading() as txn:
        assert versions.get(txn, db, ((1, 0),), 7, b"x\0") is None
        assert versions.get(txn, db, ((1, 2),), 7, b"x\0") == b"v1"
        assert versions.get(txn, db, ((1, 4),), 7, b"x\0") == b"v3"
        assert versions.get(txn, db, ((1, 9),), 7, b"x\0") is None
        branch_view = ((9, 1), (1, 3))
        assert versions.scan(txn, db, branch_view, 7) == {b"x\0": b"v3", b"y\0": b"branch"}


def test_write_read_across_blocks_and_holes(store: Store):
    tree = Tree(store, 1)
    ino = new_file(tree, b"f")
    data = bytes(range(256)) * 1500
    tree.write(ino, BLOCK_SIZE - 100, data)
    tree.write(ino, 10 * BLOCK_SIZE + 7, b"tail")
    tree.flush()
    expected = bytes(BLOCK_SIZE - 100) + data
    expected += bytes(10 * BLOCK_SIZE + 7 - len(expected)) + b"tail"
    assert tree.getattr(ino).size == len(expected)
    assert tree.read(ino, 0, len(expected) + 100) == expected
    assert tree.read(ino, 5 * BLOCK_SIZE + 3, 10) == expected[5 * BLOCK_SIZE + 3:5 * BLOCK_SIZE + 13]


@pytest.mark.parametrize("kind", [bytes, bytearray])
def test_whole_blocks_written_then_changed_in_part_before_and_after_a_flush(store: Store, kind):
    """Whole blocks overwritten, then changed in part, truncated and flushed read as written,
    whatever the caller does with its buffer afterwards."""
    tree = Tree(store, 1)
    ino = new_file(tree, b"f")
    data = kind(os.urandom(3 * BLOCK_SIZE))
    original = bytes(data)
    tree.write(ino, 0, data)
    tree.write(ino, BLOCK_SIZE + 5, b"patch")
    expected = bytearray(original)
    expected[BLOCK_SIZE + 5:BLOCK_SIZE + 10] = b"patch"
    assert tree.read(ino, 0, 3 * BLOCK_SIZE) == expected
    tree.setattr(ino, size=2 * BLOCK_SIZE + 9)
    del expected[2 * BLOCK_SIZE + 9:]
    if kind is bytearray:
        data[:] = bytes(len(data))  # the caller reuses its buffer: what was written stays
    tree.flush()
    store.chunk_cache.clear()
    assert tree.read(ino, 0, 3 * BLOCK_SIZE) == expected
    tree.write(ino, 0, bytes(BLOCK_SIZE))  # a whole block of zeros over stored data: a hole
    tree.flush()
    assert tree.read(ino, 0, BLOCK_SIZE + 10) == bytes(BLOCK_SIZE) + expected[BLOCK_SIZE:BLOCK_SIZE + 10]
    assert tree.stored_blocks(ino) == 2


def test_truncate_down_then_up_reads_zeros(store: Store):
    tree = Tree(store, 1)
    ino = new_file(tree, b"f", b"x" * (3 * BLOCK_SIZE))
    tree.flush()
    tree.setattr(ino, size=BLOCK_SIZE + 5)
    tree.setattr(ino, size=3 * BLOCK_SIZE)
    tree.flush()
    assert tree.read(ino, 0, 3 * BLOCK_SIZE) == b"x" * (BLOCK_SIZE + 5) + bytes(2 * BLOCK_SIZE - 5)


def test_truncate_and_delete_while_a_batch_is_in_flight(store: Store):
    """Neither waits for the flusher: data truncated away never comes back, at the head or
    through an older batch that commits later; the snapshot keeps what it had."""
    tree = Tree(store, 1)
    ino = new_file(tree, b"f", b"a" * (3 * BLOCK_SIZE))
    gone = new_file(tree, b"g", b"x" * 1000)
    record, historical = tree.snapshot("before")  # in flight, epoch closed
    tree.write(ino, 0, b"b" * (3 * BLOCK_SIZE))
    same_epoch = tree.take_batch()  # in flight, epoch still open
    tree.setattr(ino, size=10)
    tree.setattr(ino, size=3 * BLOCK_SIZE)
    assert tree.read(ino, 0, 3 * BLOCK_SIZE) == b"b" * 10 + bytes(3 * BLOCK_SIZE - 10)
    tree.unlink(ROOT_INODE, b"g")
    tree.delete_inode(gone)
    with pytest.raises(FsError):
        tree.getattr(gone)
    for batch in (historical, same_epoch):
        tree.commit_batch(batch, tree.seal(batch))
    store.chunk_cache.clear()
    assert tree.read(ino, 0, 3 * BLOCK_SIZE) == b"b" * 10 + bytes(3 * BLOCK_SIZE - 10)
    with pytest.raises(FsError):
        tree.getattr(gone)
    assert Tree.at_snapshot(store, record).read(ino, 0, 3 * BLOCK_SIZE) == b"a" * (3 * BLOCK_SIZE)
    assert Tree.at_snapshot(store, record).read(gone, 0, 2000) == b"x" * 1000


def test_namespace_changes_while_a_batch_is_in_flight(store: Store):
    """Entries created in a batch still in flight and removed since are gone: the directory
    is empty (rm -rf must work), its listing says so, and committing later changes nothing."""
    tree = Tree(store, 1)
    folder, _ = tree.create(ROOT_INODE, b"d", stat.S_IFDIR | 0o755, 0, 0)
    inner = new_file(tree, b"inner", b"x", parent=folder)
    in_flight = tree.take_batch()
    tree.unlink(folder, b"inner")
    assert tree.listdir(folder) == []
    tree.unlink(ROOT_INODE, b"d", directory=True)
    tree.delete_inode(inner)
    assert tree.listdir(ROOT_INODE) == []
    tree.commit_batch(in_flight, tree.seal(in_flight))
    assert tree.listdir(ROOT_INODE) == []
    tree.flush()
    assert Tree(store, 1).listdir(ROOT_INODE) == []


def test_listings_seek_past_history_and_stay_in_their_branch(store: Store):
    """A listing jumps over a name's versions instead of reading them, and a jump that lands on
    the same name in the next branch's records does not take it for this branch's."""
    tree = Tree(store, 1)
    original, _ = tree.create(ROOT_INODE, b"sub", stat.S_IFDIR | 0o755, 0, 0)
    for _ in range(50):  # history: fifty versions of one entry
        tree.rename(ROOT_INODE, b"sub", ROOT_INODE, b"sub2")
        tree.rename(ROOT_INODE, b"sub2", ROOT_INODE, b"sub")
        tree.snapshot()
    base, _ = tree.snapshot()
    tree.flush()
    first = Tree(store, store.fork(base).id)
    forked, _ = first.snapshot()
    ino, _ = first.unlink(ROOT_INODE, b"sub", directory=True)
    first.delete_inode(ino)
    gone, _ = first.snapshot()
    first.flush()
    second = Tree(store, store.fork(gone).id)  # records of a later branch, same name
    recreated, _ = second.create(ROOT_INODE, b"sub", stat.S_IFDIR | 0o755, 0, 0)
    second.flush()
    assert Tree.at_snapshot(store, forked).listdir(ROOT_INODE) == [(b"sub", original)]
    assert Tree.at_snapshot(store, gone).listdir(ROOT_INODE) == []
    assert second.listdir(ROOT_INODE) == [(b"sub", recreated)]
    assert Tree.at_snapshot(store, base).listdir(ROOT_INODE) == [(b"sub", original)]


def test_sparse_offsets_beyond_4_gib(store: Store):
    tree = Tree(store, 1)
    ino = new_file(tree, b"sparse")
    offset = 5 * 2**30 + 123
    tree.write(ino, offset, b"far")
    tree.flush()
    assert tree.getattr(ino).size == offset + 3
    assert tree.read(ino, offset - 2, 10) == b"\0\0far"
    assert store.stats()["chunk_raw_bytes"] < 2 * BLOCK_SIZE


def test_snapshot_is_immutable_and_branch_sees_it(store: Store):
    tree = Tree(store, 1)
    ino = new_file(tree, b"f", b"before")
    record, batch = tree.snapshot("s1")
    tree.write(ino, 0, b"AFTER!")
    new_file(tree, b"g", b"later")
    tree.flush()
    frozen = Tree.at_snapshot(store, record)
    assert frozen.read(ino, 0, 100) == b"before"
    assert [name for name, _ in frozen.listdir(ROOT_INODE)] == [b"f"]
    branch = store.fork(record)
    clone = Tree(store, branch.id)
    clone.write(ino, 0, b"clone")
    clone.flush()
    assert clone.read(ino, 0, 100) == b"clonee"
    assert Tree.at_snapshot(store, record).read(ino, 0, 100) == b"before"
    assert tree.read(ino, 0, 100) == b"AFTER!"
    with pytest.raises(FsError) as raised:
        frozen.write(ino, 0, b"x")
    assert raised.value.errno == errno.EROFS


def test_branches_nest_to_any_depth(store: Store):
    tree = Tree(store, 1)
    ino = new_file(tree, b"f", b"0")
    parent_tree = tree
    for depth in range(1, 6):
        record, _ = parent_tree.snapshot(f"depth{depth}")
        parent_tree.flush()
        child = Tree(store, store.fork(record).id)
        assert child.read(ino, 0, 10) == str(depth - 1).encode()
        child.write(ino, 0, str(depth).encode())
        parent_tree = child
    assert tree.read(ino, 0, 10) == b"0"


def test_snapshot_cost_does_not_grow_with_files(store: Store):
    tree = Tree(store, 1)
    for i in range(300):
        new_file(tree, f"f{i}".encode(), b"x" * 100)
    tree.flush()
    before = store.index.env.stat()["entries"]
    records = [store.index.env.info()["last_txnid"]]
    tree.snapshot("a")
    tree.flush()
    records.append(store.index.env.info()["last_txnid"])
    # One transaction for the snapshot, one for its (empty) batch: no per-file work.
    assert records[1] - records[0] <= 2
    assert store.index.env.stat()["entries"] == before


def test_same_data_is_stored_once(store: Store):
    tree = Tree(store, 1)
    payload = bytes(range(256)) * 4096  # 1 MiB
    new_file(tree, b"a", payload)
    tree.flush()
    stored = store.stats()["chunk_raw_bytes"]
    new_file(tree, b"b", payload)
    tree.flush()
    assert store.stats()["chunk_raw_bytes"] == stored
    assert store.stats()["logical_bytes"] == 2 * len(payload)


def test_namespace_errors(store: Store):
    tree = Tree(store, 1)
    d, _ = tree.create(ROOT_INODE, b"d", DIR, 0, 0)
    new_file(tree, b"f", parent=d)
    with pytest.raises(FsError) as e:
        tree.create(ROOT_INODE, b"d", FILE, 0, 0)
    assert e.value.errno == errno.EEXIST
    with pytest.raises(FsError) as e:
        tree.unlink(ROOT_INODE, b"d", directory=True)
    assert e.value.errno == errno.ENOTEMPTY
    with pytest.raises(FsError) as e:
        tree.unlink(ROOT_INODE, b"d")
    assert e.value.errno == errno.EISDIR
    with pytest.raises(FsError) as e:
        tree.lookup(ROOT_INODE, b"missing")
    assert e.value.errno == errno.ENOENT
    with pytest.raises(FsError) as e:
        tree.create(ROOT_INODE, b"x" * 256, FILE, 0, 0)
    assert e.value.errno == errno.ENAMETOOLONG


def test_rename_replaces_and_counts_links(store: Store):
    tree = Tree(store, 1)
    a = new_file(tree, b"a", b"A")
    b = new_file(tree, b"b", b"B")
    replaced = tree.rename(ROOT_INODE, b"a", ROOT_INODE, b"b")
    assert replaced is not None and replaced[0] == b and replaced[1].nlink == 0
    assert tree.lookup(ROOT_INODE, b"b")[0] == a
    c = new_file(tree, b"c")
    with pytest.raises(FsError) as e:
        tree.rename(ROOT_INODE, b"c", ROOT_INODE, b"b", RENAME_NOREPLACE)
    assert e.value.errno == errno.EEXIST
    tree.rename(ROOT_INODE, b"c", ROOT_INODE, b"b", RENAME_EXCHANGE)
    assert tree.lookup(ROOT_INODE, b"b")[0] == c and tree.lookup(ROOT_INODE, b"c")[0] == a
    d1, _ = tree.create(ROOT_INODE, b"d1", DIR, 0, 0)
    tree.create(d1, b"sub", DIR, 0, 0)
    assert tree.getattr(d1).nlink == 3
    d2, _ = tree.create(ROOT_INODE, b"d2", DIR, 0, 0)
    tree.rename(d1, b"sub", d2, b"sub")
    assert tree.getattr(d1).nlink == 2 and tree.getattr(d2).nlink == 3


def test_store_survives_reopen(tmp_path: Path):
    path = tmp_path / "s"
    store = Store.init(path)
    tree = Tree(store, 1)
    ino = new_file(tree, b"keep", b"data" * 1000)
    record, _ = tree.snapshot("one")
    tree.flush()
    store.close()
    again = Store.open(path)
    assert Tree(again, 1).read(ino, 0, 8) == b"datadata"
    assert again.resolve_snapshot("one").id == record.id
    again.close()


def test_store_refuses_what_is_not_a_store(tmp_path: Path):
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "file").write_text("x")
    with pytest.raises(StoreError, match="not empty"):
        Store.init(tmp_path / "junk")
    with pytest.raises(StoreError, match="not a cowfs store"):
        Store.open(tmp_path / "junk")
    with pytest.raises(StoreError, match="no cowfs store"):
        Store.open(tmp_path / "missing")
    (tmp_path / "other" / "index.lmdb").mkdir(parents=True)
    lmdb.open(str(tmp_path / "other" / "index.lmdb")).close()  # an LMDB index, but not ours
    with pytest.raises(StoreError, match="no meta, .* tables: made by another cowfs version"):
        Store.open(tmp_path / "other", readonly=True)


def test_snapshot_resolution(store: Store):
    tree = Tree(store, 1)
    first, _ = tree.snapshot("before cleaning")
    second, _ = tree.snapshot("after training")
    tree.flush()
    assert store.resolve_snapshot(first.name).id == first.id
    assert store.resolve_snapshot(str(second.id)).id == second.id
    assert store.resolve_snapshot("before").id == first.id
    with pytest.raises(StoreError, match="no snapshot"):
        store.resolve_snapshot("nothing")


@pytest.mark.parametrize("content", ["compressible", "incompressible"])
@pytest.mark.parametrize("span", ["one block", "all blocks"])
def test_corrupt_chunk_is_an_error_never_wrong_bytes(store: Store, content: str, span: str):
    tree = Tree(store, 1)
    size = 4 * BLOCK_SIZE
    text = b"".join(b"%d,%d\n" % (i, i * i) for i in range(size // 8))[:size]  # no two blocks alike
    data = os.urandom(size) if content == "incompressible" else text
    ino = new_file(tree, b"f", data)
    tree.flush()
    store.sync()
    corrupt_first_chunk(store.path)
    store.chunk_cache.clear()
    with pytest.raises(CorruptChunkError) as raised:  # a whole read unseals its chunks on all cores
        tree.read(ino, 0, 100 if span == "one block" else size)
    assert raised.value.errno == errno.EIO
    assert tree.read(ino, BLOCK_SIZE, 3 * BLOCK_SIZE) == data[BLOCK_SIZE:], "the other blocks read as written"


def test_shared_work_keeps_order_and_raises_after_every_item_finished():
    threads, started, finished = set(), [], []

    def work(item: int) -> int:
        started.append(item)
        time.sleep(0.05)  # releases the GIL, as zstd and blake3 do
        threads.add(threading.get_ident())
        if item == 3:
            raise ValueError("item 3")
        finished.append(item)
        return item * item

    assert map_shared(work, [0, 1, 2, 4, 5, 6, 7]) == [0, 1, 4, 16, 25, 36, 49]
    assert len(threads) == 1 + min(HELPERS, 6)
    started.clear()
    finished.clear()
    with pytest.raises(ValueError, match="item 3"):
        map_shared(work, list(range(8)))
    at_raise = sorted(finished)  # items started then but not finished: a helper still at work
    assert at_raise == sorted(set(started) - {3}), "a helper was still at work when the error was raised"
    assert HELPERS == 0 or at_raise == [0, 1, 2, 4, 5, 6, 7], "the other items all ran"


def test_incompressible_blocks_are_stored_raw_and_the_rest_compressed(store: Store):
    tree = Tree(store, 1)
    noise, text = os.urandom(3 * BLOCK_SIZE), b"day,value\n1,2.5\n" * 30000
    for name, data in ((b"noise", noise), (b"text", text)):
        new_file(tree, name, data)
    tree.flush()
    stored = {digest: stored_len for pack in sorted((store.path / "packs").glob("*.pack"))
              for digest, _, _, stored_len in scan_pack(pack)}
    assert stored[digest_of(noise[:BLOCK_SIZE])] == BLOCK_SIZE, "noise is kept raw: no zstd frame around it"
    assert stored[digest_of(text[:BLOCK_SIZE])] < BLOCK_SIZE // 10, "text is compressed"
    store.chunk_cache.clear()
    assert tree.read(tree.lookup(ROOT_INODE, b"noise")[0], 0, len(noise)) == noise
    assert tree.read(tree.lookup(ROOT_INODE, b"text")[0], 0, len(text)) == text


def test_a_format_1_store_still_reads_and_is_marked_2_once_written(tmp_path: Path):
    # Format 1 kept every chunk as a zstd frame, even one exactly as long as the chunk.
    frame_as_long = zstandard.ZstdCompressor(level=1).compress(b"a" * 17)
    assert len(frame_as_long) == 17
    assert unseal(digest_of(b"a" * 17), frame_as_long, 17, "a format 1 pack") == b"a" * 17
    path = tmp_path / "s"
    store = Store.init(path)
    tree = Tree(store, 1)
    ino = new_file(tree, b"f", b"kept" * 1000)
    tree.flush()
    store.index.write(lambda txn: txn.put(b"format", b"cowfs-store-1", db=store.index.db(keys.DB_META)))
    store.close()

    def marked() -> bytes:
        reader = Store.open(path, readonly=True)
        with reader.index.reading() as txn:
            found = bytes(txn.get(b"format", db=reader.index.db(keys.DB_META)))
        reader.close()
        return found

    reader = Store.open(path, readonly=True)
    assert Tree(reader, 1).read(ino, 0, 8) == b"keptkept"
    reader.close()
    assert marked() == b"cowfs-store-1", "a read-only open changes nothing"
    Store.open(path).close()
    assert marked() == FORMAT


def test_a_full_lmdb_map_grows_by_itself(tmp_path, monkeypatch):
    import cowfs.fs.index as index_module

    monkeypatch.setattr(index_module, "INITIAL_MAP_SIZE", 1 << 20)  # 1 MiB: full almost at once
    store = Store.init(tmp_path / "small-map")
    tree = Tree(store, 1)
    for i in range(3000):
        new_file(tree, f"file-{i:05d}-{'x' * 100}".encode(), b"%d" % i)
    tree.flush()
    assert store.index.env.info()["map_size"] > 1 << 20
    assert tree.read(tree.lookup(ROOT_INODE, f"file-02999-{'x' * 100}".encode())[0], 0, 10) == b"2999"
    store.close()


def test_diff_sees_a_same_size_rewrite_that_kept_mtime(store: Store):
    """Under the daemon the kernel owns mtime, on a coarse clock: a rewrite within one tick
    leaves every attribute as it was, and diff must still see it."""
    from cowfs.fs.diff import diff_trees

    tree = Tree(store, 1)
    tree.kernel_stamps_writes = True
    ino, _ = tree.create(ROOT_INODE, b"model.pkl", stat.S_IFREG | 0o644, 0, 0)
    tree.write(ino, 0, b"a" * 1000)
    first, _ = tree.snapshot()
    tree.write(ino, 0, b"b" * 1000)
    second, _ = tree.snapshot()
    tree.flush()
    assert Tree.at_snapshot(store, first).getattr(ino) == Tree.at_snapshot(store, second).getattr(ino)
    changes = diff_trees(Tree.at_snapshot(store, first), Tree.at_snapshot(store, second))
    assert [(c.path, c.kind) for c in changes] == [("model.pkl", "modified")]


def test_adopted_blocks_read_as_the_original_and_a_missing_chunk_is_refused(store: Store):
    """What a pull does: a new file takes stored chunks by digest, without writing its data."""
    tree = Tree(store, 1)
    data = bytes(range(256)) * 1000 + b"tail"
    source = new_file(tree, b"source", data)
    tree.flush()
    blocks = tree.block_digests(source)  # block name (index, big-endian) -> digest; no holes here
    copy = new_file(tree, b"copy")
    tree.adopt_blocks(copy, list(enumerate(blocks[name] for name in sorted(blocks))), len(data))
    assert tree.read(copy, 0, len(data) + 10) == data
    tree.flush()
    assert Tree(store, 1).read(copy, 0, len(data)) == data, "adopted blocks are committed with the tree"
    orphan = new_file(tree, b"orphan")
    with pytest.raises(CorruptChunkError):
        tree.adopt_blocks(orphan, [(0, b"\x01" * 32)], BLOCK_SIZE)
    assert tree.getattr(orphan).size == 0 and tree.read(orphan, 0, 10) == b""


def test_data_the_store_holds_is_not_compressed_again(store: Store, monkeypatch):
    """A file written again as it was is only hashed: its chunks are referenced, not compressed
    a second time (notebooks re-save the same data all the time)."""
    import cowfs.fs.tree as tree_module

    compressed: list[int] = []

    def counting(blocks, *args, **kwargs):
        compressed.append(len(blocks))
        return real(blocks, *args, **kwargs)

    real = tree_module.seal_many
    monkeypatch.setattr(tree_module, "seal_many", counting)
    tree = Tree(store, 1)
    text = b"".join(b"%d;%d\n" % (i, i * 3) for i in range(100000))
    first = new_file(tree, b"a.csv", text)
    tree.flush()
    second = new_file(tree, b"copy.csv", text)
    tree.flush()
    assert compressed == [len(text) // BLOCK_SIZE + 1, 0]
    store.chunk_cache.clear()
    assert tree.read(first, 0, len(text)) == text and tree.read(second, 0, len(text)) == text


def test_the_same_bytes_are_the_same_chunks_however_they_were_written(store: Store):
    """Deduplication is by content, not by how a program wrote it: a file written front to back
    and the same bytes written as 4 KiB pages in random order into a sparse file of that size
    (as a database or an mmap does) add no chunk the first did not."""
    import random

    rng = random.Random(5)
    size = 3 * BLOCK_SIZE + 50_000
    data = bytearray(size)
    pages = rng.sample(range(size // 4096), 40)  # some pages hold data, the rest stay zero
    for page in pages:
        data[page * 4096:(page + 1) * 4096] = rng.randbytes(4096)
    tree = Tree(store, 1)
    new_file(tree, b"front-to-back", bytes(data))
    tree.flush()
    chunks = store.stats()["chunk_count"]
    scattered = new_file(tree, b"scattered")
    tree.setattr(scattered, size=size)
    for page in pages:
        tree.write(scattered, page * 4096, bytes(data[page * 4096:(page + 1) * 4096]))
    tree.flush()
    store.chunk_cache.clear()
    assert tree.read(scattered, 0, size + 1) == data
    assert store.stats()["chunk_count"] == chunks


def test_whole_blocks_written_are_the_writers_bytes_until_changed(store: Store):
    """A whole block from an immutable write is kept as a view of it (no copy) and hashed as it
    comes; a later write into part of it, a whole block written over it, a truncation or the
    caller reusing a mutable buffer change nothing else, and each block is stored under the
    digest of what it holds when sealed, not of what was first written."""
    tree = Tree(store, 1)
    ino = new_file(tree, b"f")
    reused = bytearray(os.urandom(2 * BLOCK_SIZE))
    tree.write(ino, 0, reused)
    first = bytes(reused)
    reused[:] = bytes(len(reused))  # the caller reuses its buffer: the file keeps what was written
    assert tree.read(ino, 0, 2 * BLOCK_SIZE) == first
    data = os.urandom(3 * BLOCK_SIZE)
    tree.write(ino, 0, data)
    tree.write(ino, BLOCK_SIZE + 100, b"x" * 10)
    tree.setattr(ino, size=2 * BLOCK_SIZE + 7)
    replaced = os.urandom(BLOCK_SIZE)
    tree.write(ino, 0, replaced)
    expected = replaced + data[BLOCK_SIZE:BLOCK_SIZE + 100] + b"x" * 10 + data[BLOCK_SIZE + 110:2 * BLOCK_SIZE + 7]
    assert tree.read(ino, 0, 3 * BLOCK_SIZE) == expected
    tree.flush()
    store.chunk_cache.clear()
    assert tree.read(ino, 0, 3 * BLOCK_SIZE) == expected
    stored = {int.from_bytes(name, "big"): digest for name, digest in tree.block_digests(ino).items()}
    assert stored == {index: digest_of(expected[index * BLOCK_SIZE:(index + 1) * BLOCK_SIZE]) for index in range(3)}


def test_writes_that_meet_inside_blocks_read_and_store_as_written(store: Store):
    """The kernel writes a file back in 1 MiB requests that mostly start and end inside a block.
    Where one request ends and the next goes on, the block is kept as the two requests' views
    (a ``Seam``) until sealing joins them; reads before and after a flush, a write into part of
    such a block, a truncation through one and a write over one whole all see the bytes written,
    and each block is stored under the digest of what it holds."""
    tree = Tree(store, 1)
    ino = new_file(tree, b"frame.csv")
    data = os.urandom(4 * (1 << 20) + 5000)
    offset = 0
    for length in (1 << 20) - 64 * 1024, 1 << 20, 1 << 20, 1 << 20, len(data) - 4 * (1 << 20) + 64 * 1024:
        tree.write(ino, offset, data[offset:offset + length])  # bytes, as pyfuse3 hands them over
        offset += length
    seams = [index for (owner, index), buf in tree.dirty_blocks.items() if owner == ino and isinstance(buf, Seam)]
    assert seams, "no block was kept as two views: the case under test did not happen"
    expected = bytearray(data)
    assert tree.read(ino, 0, len(data) + 10) == expected
    seam = seams[0] * BLOCK_SIZE
    tree.write(ino, seam + 10, b"patch")  # into part of a seam: it becomes a buffer of its own
    expected[seam + 10:seam + 15] = b"patch"
    other = seams[1] * BLOCK_SIZE
    tree.write(ino, other, bytes(BLOCK_SIZE - 1) + b"z")  # a whole block over another
    expected[other:other + BLOCK_SIZE] = bytes(BLOCK_SIZE - 1) + b"z"
    end = seams[-1] * BLOCK_SIZE + 100  # a truncation through the last
    tree.setattr(ino, size=end)
    del expected[end:]
    assert tree.read(ino, 0, len(data)) == expected
    assert isinstance(tree.dirty_blocks[(ino, seams[2])], Seam)  # one is left for sealing to join
    tree.flush()
    store.chunk_cache.clear()
    assert tree.read(ino, 0, len(data)) == expected
    stored = {int.from_bytes(name, "big"): digest for name, digest in tree.block_digests(ino).items()}
    blocks = -(-len(expected) // BLOCK_SIZE)
    assert stored == {index: digest_of(bytes(expected[index * BLOCK_SIZE:(index + 1) * BLOCK_SIZE]))
                      for index in range(blocks)}
    gap = new_file(tree, b"gap.bin")  # a start kept as a view, then the block's end past a gap
    head, tail = os.urandom(64 * 1024), os.urandom(28 * 1024)
    tree.write(gap, 0, head)
    tree.write(gap, BLOCK_SIZE - len(tail), tail)
    whole = head + bytes(BLOCK_SIZE - len(head) - len(tail)) + tail
    assert tree.read(gap, 0, 2 * BLOCK_SIZE) == whole
    tree.flush()
    store.chunk_cache.clear()
    assert tree.read(gap, 0, 2 * BLOCK_SIZE) == whole
