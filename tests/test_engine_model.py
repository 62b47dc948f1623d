"""Random operation sequences against a plain in-memory model, across snapshots and branches."""

from __future__ import annotations

import stat
import tempfile
from pathlib import Path

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, invariant, precondition, rule

from cowfs.fs.store import ROOT_INODE, Store
from cowfs.fs.tree import BLOCK_SIZE, Tree

NAMES = st.sampled_from([b"a", b"b", b"c", b"d.csv", b"model.pkl"])
OFFSETS = st.integers(min_value=0, max_value=3 * BLOCK_SIZE)
DATA = st.one_of(st.binary(min_size=1, max_size=300),
                 st.builds(lambda b, n: b * n, st.binary(min_size=1, max_size=4), st.integers(1, 70000)))


class WorkspaceModel(RuleBasedStateMachine):
    snapshots = Bundle("snapshots")

    def __init__(self) -> None:
        super().__init__()
        self._dir = tempfile.TemporaryDirectory()
        self.store = Store.init(Path(self._dir.name) / "store")
        self.tree = Tree(self.store, 1)
        self.model: dict[bytes, bytearray] = {}
        self.frozen: list[tuple[object, dict[bytes, bytes]]] = []

    def teardown(self) -> None:
        self.tree.flush()
        for record, expected in self.frozen:
            assert self._contents(Tree.at_snapshot(self.store, record)) == expected
        self.store.close()
        self._dir.cleanup()

    def _ino(self, name: bytes) -> int:
        return self.tree.lookup(ROOT_INODE, name)[0]

    def _contents(self, tree: Tree) -> dict[bytes, bytes]:
        return {name: tree.read(ino, 0, tree.getattr(ino).size) for name, ino in tree.listdir(ROOT_INODE)}

    @rule(name=NAMES, offset=OFFSETS, data=DATA)
    def write(self, name: bytes, offset: int, data: bytes) -> None:
        if name not in self.model:
            self.tree.create(ROOT_INODE, name, stat.S_IFREG | 0o644, 0, 0)
            self.model[name] = bytearray()
        buf = self.model[name]
        if len(buf) < offset:
            buf.extend(bytes(offset - len(buf)))
        buf[offset:offset + len(data)] = data
        self.tree.write(self._ino(name), offset, data)

    @precondition(lambda self: self.model)
    @rule(data=st.data(), size=st.integers(0, 3 * BLOCK_SIZE))
    def truncate(self, data, size: int) -> None:
        name = data.draw(st.sampled_from(sorted(self.model)))
        self.tree.setattr(self._ino(name), size=size)
        buf = self.model[name]
        if size < len(buf):
            del buf[size:]
        else:
            buf.extend(bytes(size - len(buf)))

    @precondition(lambda self: self.model)
    @rule(data=st.data())
    def unlink(self, data) -> None:
        name = data.draw(st.sampled_from(sorted(self.model)))
        ino, attrs = self.tree.unlink(ROOT_INODE, name)
        if attrs.nlink == 0:
            self.tree.delete_inode(ino)
        del self.model[name]

    @precondition(lambda self: self.model)
    @rule(data=st.data(), new=NAMES)
    def rename(self, data, new: bytes) -> None:
        old = data.draw(st.sampled_from(sorted(self.model)))
        replaced = self.tree.rename(ROOT_INODE, old, ROOT_INODE, new)
        if replaced is not None and replaced[1].nlink == 0:
            self.tree.delete_inode(replaced[0])
        if old != new:
            self.model[new] = self.model.pop(old)

    @rule(target=snapshots)
    def snapshot(self):
        record, _ = self.tree.snapshot()
        self.frozen.append((record, {k: bytes(v) for k, v in self.model.items()}))
        return record

    @rule()
    def commit_oldest_batch(self) -> None:
        """Commit one batch while newer dirty data stays in memory (the daemon's interleaving)."""
        if self.tree.inflight:
            batch = self.tree.inflight[0]
            self.tree.commit_batch(batch, self.tree.seal(batch))
        elif self.tree.take_batch() is not None:
            pass  # left in flight, as while the flusher seals it

    @rule(record=snapshots)
    def switch_to_branch_of(self, record) -> None:
        self.tree.flush()
        expected = dict(next(frozen for rec, frozen in self.frozen if rec is record))
        self.tree = Tree(self.store, self.store.fork(record).id)
        self.model = {k: bytearray(v) for k, v in expected.items()}

    @invariant()
    def live_tree_matches_model(self) -> None:
        assert self._contents(self.tree) == {k: bytes(v) for k, v in self.model.items()}


WorkspaceModel.TestCase.settings = settings(max_examples=300, stateful_step_count=50, deadline=None)
test_workspace_model = WorkspaceModel.TestCase
