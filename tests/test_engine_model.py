"""Random operation sequences against a plain in-memory model, across snapshots and branches.

Files live in the root and in one subdirectory that comes and goes (``rm -rf`` included), so
directory entries are exercised with batches in flight as much as file data is. Modification
times are modelled as under the daemon: the kernel owns them across writes and hands them over
(a setattr); what the user saw live is what a snapshot and a reopened store must show."""

from __future__ import annotations

import errno
import stat
import tempfile
from pathlib import Path

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, invariant, precondition, rule

from cowfs.fs.errors import FsError
from cowfs.fs.fsck import check
from cowfs.fs.history import is_durable
from cowfs.fs.recompress import compress_pack
from cowfs.fs.store import ROOT_INODE, Store
from cowfs.fs.tree import BLOCK_SIZE, UNKNOWN, Tree

NAMES = st.sampled_from([b"a", b"b", b"c", b"d.csv", b"model.pkl"])
SUBDIR = b"sub"
DIRECTORY = b"<directory>"  # how the model and the tree listings show the subdirectory
OFFSETS = st.integers(min_value=0, max_value=3 * BLOCK_SIZE)
DATA = st.one_of(st.binary(min_size=1, max_size=300),
                 st.builds(lambda b, n: b * n, st.binary(min_size=1, max_size=4), st.integers(1, 70000)))


class WorkspaceModel(RuleBasedStateMachine):
    snapshots = Bundle("snapshots")

    def __init__(self) -> None:
        super().__init__()
        self._dir = tempfile.TemporaryDirectory()
        self.store = Store.init(Path(self._dir.name) / "store")
        self.tree = self._open(1)
        self.model: dict[bytes, bytearray] = {}  # b"name" or b"sub/name" -> contents
        self.times: dict[bytes, int] = {}  # the same paths -> the mtime the user saw
        self.has_subdir = False
        self.frozen: list[tuple[object, dict[bytes, bytes], dict[bytes, int]]] = []

    def _open(self, branch_id: int) -> Tree:
        tree = Tree(self.store, branch_id)
        tree.kernel_stamps_writes = True  # as the daemon runs it
        return tree

    def teardown(self) -> None:
        """Every snapshot is listed once flushed (records travel with batches), numbered in
        the order taken, durable, and holds what the tree held when it was taken."""
        self.tree.flush()
        ids = [record.id for record, _, _ in self.frozen]
        assert ids == sorted(set(ids)), f"snapshot numbers out of order or repeated: {ids}"
        for record, expected, times in self.frozen:
            listed = self.store.snapshot(record.id)
            assert listed is not None, f"snapshot {record.name} was never written"
            assert (listed.branch, listed.epoch, listed.same_as) == (record.branch, record.epoch, record.same_as)
            assert is_durable(self.store, listed)
            assert self._contents(Tree.at_snapshot(self.store, listed)) == expected
            assert self._times(Tree.at_snapshot(self.store, listed)) == times
        report = check(self.store)
        assert report.clean, report
        self.store.close()
        self._dir.cleanup()

    def _where(self, path: bytes) -> tuple[int, bytes]:
        """The parent inode and the last name of a model path."""
        if path.startswith(SUBDIR + b"/"):
            return self.tree.lookup(ROOT_INODE, SUBDIR)[0], path[len(SUBDIR) + 1:]
        return ROOT_INODE, path

    def _ino(self, path: bytes) -> int:
        return self.tree.lookup(*self._where(path))[0]

    def _contents(self, tree: Tree, directory: int = ROOT_INODE, prefix: bytes = b"") -> dict[bytes, bytes]:
        found = {}
        for name, ino in tree.listdir(directory):
            attrs = tree.getattr(ino)
            if attrs.is_dir:
                found[prefix + name] = DIRECTORY
                found.update(self._contents(tree, ino, prefix + name + b"/"))
            else:
                found[prefix + name] = tree.read(ino, 0, attrs.size)
        return found

    def _times(self, tree: Tree, directory: int = ROOT_INODE, prefix: bytes = b"") -> dict[bytes, int]:
        found = {}
        for name, ino in tree.listdir(directory):
            attrs = tree.getattr(ino)
            if attrs.is_dir:
                found.update(self._times(tree, ino, prefix + name + b"/"))
            else:
                found[prefix + name] = attrs.mtime_ns
        return found

    def _expected(self) -> dict[bytes, bytes]:
        return {k: bytes(v) for k, v in self.model.items()} | ({SUBDIR: DIRECTORY} if self.has_subdir else {})

    def _remove(self, path: bytes) -> None:
        ino, attrs = self.tree.unlink(*self._where(path))
        if attrs.nlink == 0:
            self.tree.delete_inode(ino)
        del self.model[path]
        del self.times[path]

    @rule(name=NAMES, offset=OFFSETS, data=DATA)
    def write(self, name: bytes, offset: int, data: bytes) -> None:
        if name not in self.model:
            _, attrs = self.tree.create(ROOT_INODE, name, stat.S_IFREG | 0o644, 0, 0)
            self.model[name] = bytearray()
            self.times[name] = attrs.mtime_ns
        buf = self.model[name]
        if len(buf) < offset:
            buf.extend(bytes(offset - len(buf)))
        buf[offset:offset + len(data)] = data
        self.tree.write(self._ino(name), offset, data)

    @precondition(lambda self: self.model)
    @rule(data=st.data(), mtime=st.integers(1, 2**62))
    def kernel_hands_over_times(self, data, mtime: int) -> None:
        """The kernel's times after writes (at close, fsync or sync), or a utime()."""
        name = data.draw(st.sampled_from(sorted(self.model)))
        self.tree.setattr(self._ino(name), mtime_ns=mtime, ctime_ns=mtime)
        self.times[name] = mtime

    @precondition(lambda self: self.model)
    @rule(data=st.data(), size=st.integers(0, 3 * BLOCK_SIZE), mtime=st.integers(1, 2**62))
    def truncate(self, data, size: int, mtime: int) -> None:
        name = data.draw(st.sampled_from(sorted(self.model)))
        self.tree.setattr(self._ino(name), size=size, mtime_ns=mtime)  # the kernel sends its time along
        self.times[name] = mtime
        buf = self.model[name]
        if size < len(buf):
            del buf[size:]
        else:
            buf.extend(bytes(size - len(buf)))

    @precondition(lambda self: self.model)
    @rule(data=st.data())
    def unlink(self, data) -> None:
        self._remove(data.draw(st.sampled_from(sorted(self.model))))

    @precondition(lambda self: self.model)
    @rule(data=st.data(), new=NAMES, into_subdir=st.booleans())
    def rename(self, data, new: bytes, into_subdir: bool) -> None:
        old = data.draw(st.sampled_from(sorted(self.model)))
        if into_subdir and self.has_subdir:
            new = SUBDIR + b"/" + new
        replaced = self.tree.rename(*self._where(old), *self._where(new))
        if replaced is not None and replaced[1].nlink == 0:
            self.tree.delete_inode(replaced[0])
        if old != new:
            self.model[new] = self.model.pop(old)
            self.times[new] = self.times.pop(old)

    @precondition(lambda self: not self.has_subdir)
    @rule()
    def make_subdir(self) -> None:
        self.tree.create(ROOT_INODE, SUBDIR, stat.S_IFDIR | 0o755, 0, 0)
        self.has_subdir = True

    @precondition(lambda self: self.has_subdir)
    @rule()
    def remove_subdir_with_its_files(self) -> None:
        """rm -rf: a directory with names in it refuses to go, then goes once they are gone."""
        inside = [path for path in self.model if path.startswith(SUBDIR + b"/")]
        if inside:
            try:
                self.tree.unlink(ROOT_INODE, SUBDIR, directory=True)
                raise AssertionError("a directory with files in it was removed")
            except FsError as exc:
                assert exc.errno == errno.ENOTEMPTY
        for path in inside:
            self._remove(path)
        ino, _ = self.tree.unlink(ROOT_INODE, SUBDIR, directory=True)
        self.tree.delete_inode(ino)
        self.has_subdir = False

    @rule(target=snapshots)
    def snapshot(self):
        record, _ = self.tree.snapshot()
        self.frozen.append((record, self._expected(), dict(self.times)))
        return record

    @rule()
    def remount(self) -> None:
        """The daemon stops (everything flushed) and a new one opens the branch."""
        self.tree.flush()
        self.tree = self._open(self.tree.branch_id)

    @rule(compress=st.booleans())
    def commit_oldest_batch(self, compress: bool) -> None:
        """Commit one batch while newer dirty data stays in memory (the daemon's interleaving),
        compressed, or raw as when the flusher is behind."""
        if self.tree.inflight:
            batch = self.tree.inflight[0]
            self.tree.commit_batch(batch, self.tree.seal(batch, compress))
        elif self.tree.take_batch() is not None:
            pass  # left in flight, as while the flusher seals it

    @rule()
    def compress_raw_packs(self) -> None:
        """The idle daemon rotates its pack and compresses the packs it filled raw; later reads
        come from the new places (the chunk cache is dropped so that they really do)."""
        self.store.close_pack()
        for pack_id in self.store.uncompressed_packs():
            compress_pack(self.store, pack_id)
        assert self.store.uncompressed_packs() == []
        self.store.chunk_cache.clear()

    @rule(record=snapshots)
    def switch_to_branch_of(self, record) -> None:
        self.tree.flush()
        expected, times = next((dict(frozen), dict(times)) for rec, frozen, times in self.frozen if rec is record)
        self.tree = self._open(self.store.fork(record).id)
        self.has_subdir = expected.pop(SUBDIR, None) == DIRECTORY
        self.model = {k: bytearray(v) for k, v in expected.items()}
        self.times = times

    @invariant()
    def a_listed_snapshot_is_whole(self) -> None:
        """A snapshot is listed only with the batch that completes it: whoever finds it
        (`cowfs log`, `cowfs mount`) finds all of its data, while later batches are in flight."""
        for record, expected, _ in self.frozen[-3:]:
            listed = self.store.snapshot(record.id)
            if listed is not None:
                assert self._contents(Tree.at_snapshot(self.store, listed)) == expected

    @invariant()
    def live_tree_matches_model(self) -> None:
        assert self._contents(self.tree) == self._expected()
        assert self._times(self.tree) == self.times

    @invariant()
    def byte_counts_match_the_buffers(self) -> None:
        """The flusher holds writers back by these counts, kept as writes go rather than summed."""
        held = [sum(len(buf) for buf in batch.blocks.values() if buf is not None) for batch in self.tree.inflight]
        assert [batch.nbytes for batch in self.tree.inflight] == held
        assert self.tree.inflight_bytes == sum(held)
        assert self.tree.dirty_bytes == sum(len(buf) for buf in self.tree.dirty_blocks.values() if buf is not None)

    @invariant()
    def recalled_records_match_the_index(self) -> None:
        """Reads answered from memory (fs/recall.py) see what the index holds: a record an
        in-memory layer does not shadow is the committed one, however many batches went by."""
        tree = self.tree
        with self.store.index.reading() as txn:
            for ino, attrs in tree._recalled_attrs.items():
                if tree._pending_attrs(ino) is UNKNOWN:
                    assert attrs == tree._stored_attrs(txn, ino), f"inode {ino} recalled stale"
            for (parent, name), ino in tree._recalled_entries.items():
                if not any(name in layer for layer in tree._entry_layers(parent)):
                    assert ino == tree._stored_entry(txn, parent, name), f"entry {name!r} recalled stale"

    @invariant()
    def block_indexes_by_file_match_the_blocks(self) -> None:
        """Deletion and truncation find a file's dirty blocks by these indexes alone: a block
        missing from them would outlive its file and commit as garbage."""
        layers = [(batch.blocks, batch.files) for batch in self.tree.inflight]
        for blocks, files in layers + [(self.tree.dirty_blocks, self.tree.dirty_files)]:
            assert {(ino, index) for ino, indexes in files.items() for index in indexes} == set(blocks)
            assert all(files.values())


WorkspaceModel.TestCase.settings = settings(max_examples=300, stateful_step_count=50, deadline=None)
test_workspace_model = WorkspaceModel.TestCase
