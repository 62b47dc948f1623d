"""A random-operation exerciser: ordinary system calls on a real cowfs mount, every read checked
against an in-memory model, snapshots checked against the model as it was when each was taken,
and branches of those snapshots exercised the same way.

    python tests/exerciser.py --ops 500000 --branches 2  # the soak: a million operations (root, /dev/fuse)

The test suite runs a bounded version (tests/test_mount_exerciser.py).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from conftest import Workspace, drop_caches  # noqa: E402
from cowfs.cli.client import snapshot  # noqa: E402
from cowfs.fs.store import Store  # noqa: E402
from cowfs.fs.tree import Tree  # noqa: E402

NAMES = [f"{d}/{n}" for d in ("", "a", "a/b") for n in ("x.csv", "y.pkl", "z", "w.bin")]
MAX_OFFSET = 600_000


@dataclass
class Exerciser:
    workspace: Workspace
    mount: Path
    rng: random.Random
    model: dict[str, bytearray] = field(default_factory=dict)
    snapshots: list[tuple[str, dict[str, bytes]]] = field(default_factory=list)
    """Each snapshot's id and the digest of every file it should hold: digests, not copies, so a
    million-operation soak with tens of thousands of snapshots fits in memory."""
    counts: dict[str, int] = field(default_factory=dict)

    def path(self, name: str) -> Path:
        return self.mount / name.lstrip("/")

    def run(self, ops: int) -> None:
        for directory in ("a", "a/b"):
            self.path(directory).mkdir(exist_ok=True)
        actions = [(self.write, 30), (self.read, 30), (self.truncate, 8), (self.unlink, 5), (self.rename, 6),
                   (self.fsync, 5), (self.snapshot, 4), (self.listdir, 6), (self.drop, 1)]
        population, weights = zip(*actions)
        for _ in range(ops):
            action = self.rng.choices(population, weights)[0]
            action()
            self.counts[action.__name__] = self.counts.get(action.__name__, 0) + 1

    def write(self) -> None:
        name = self.rng.choice(NAMES)
        offset = self.rng.randrange(MAX_OFFSET)
        data = self.rng.randbytes(self.rng.choice([1, 100, 4096, 70_000, 200_000]))
        fd = os.open(self.path(name), os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            os.pwrite(fd, data, offset)
        finally:
            os.close(fd)
        buf = self.model.setdefault(name, bytearray())
        if len(buf) < offset:
            buf.extend(bytes(offset - len(buf)))
        buf[offset:offset + len(data)] = data

    def read(self) -> None:
        if not self.model:
            return
        name = self.rng.choice(sorted(self.model))
        expected = bytes(self.model[name])
        offset = self.rng.randrange(len(expected) + 1)
        size = self.rng.choice([1, 4096, 131072, 1 << 20])
        with open(self.path(name), "rb") as handle:
            handle.seek(offset)
            got = handle.read(size)
        assert got == expected[offset:offset + size], f"read of {name} at {offset} differs"
        assert os.stat(self.path(name)).st_size == len(expected)

    def truncate(self) -> None:
        if not self.model:
            return
        name = self.rng.choice(sorted(self.model))
        size = self.rng.randrange(MAX_OFFSET)
        os.truncate(self.path(name), size)
        buf = self.model[name]
        del buf[size:]
        buf.extend(bytes(size - len(buf)))

    def unlink(self) -> None:
        if self.model:
            name = self.rng.choice(sorted(self.model))
            os.unlink(self.path(name))
            del self.model[name]

    def rename(self) -> None:
        if self.model:
            old, new = self.rng.choice(sorted(self.model)), self.rng.choice(NAMES)
            os.rename(self.path(old), self.path(new))
            if old != new:
                self.model[new] = self.model.pop(old)

    def fsync(self) -> None:
        if self.model:
            fd = os.open(self.path(self.rng.choice(sorted(self.model))), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def listdir(self) -> None:
        for directory in ("", "a", "a/b"):
            listed = {n for n in os.listdir(self.path(directory) if directory else self.mount)
                      if not os.path.isdir(self.path(f"{directory}/{n}"))}
            expected = {n.rsplit("/", 1)[1] for n in self.model if n.rsplit("/", 1)[0] == directory}
            assert listed == expected, f"listing of /{directory} differs"

    def snapshot(self) -> None:
        # Over the socket from this process, as the kernel extension does: a CLI start per
        # snapshot would be most of a soak's time.
        record = snapshot(self.mount)
        self.snapshots.append((record["id"], {k: digest(v) for k, v in self.model.items()}))

    def drop(self) -> None:
        drop_caches()

    def verify_snapshots(self) -> int:
        store = Store.open(self.workspace.store, readonly=True)
        try:
            for snap_id, expected in self.snapshots:
                tree = Tree.at_snapshot(store, store.resolve_snapshot(snap_id))
                got = {}
                for name in NAMES:
                    found = tree.resolve(name.lstrip("/").encode())
                    if found is not None:
                        got[name] = digest(tree.read(found[0], 0, found[1].size))
                assert got == expected, f"snapshot {snap_id} differs from the model"
        finally:
            store.close()
        return len(self.snapshots)


def digest(data: bytes | bytearray) -> bytes:
    return hashlib.blake2b(data, digest_size=16).digest()


def read_model(mount: Path, expected: dict[str, bytes]) -> dict[str, bytearray]:
    """The files a fresh branch shows, checked against the digests its snapshot was taken with."""
    model = {}
    for name in NAMES:
        path = mount / name.lstrip("/")
        if path.exists():
            model[name] = bytearray(path.read_bytes())
    assert {k: digest(v) for k, v in model.items()} == expected, "a new branch differs from its snapshot"
    return model


def exercise(workspace: Workspace, ops: int, seed: int, branches: int = 1) -> dict[str, int]:
    """Run ``ops`` operations on main, then on branches made from random snapshots."""
    rng = random.Random(seed)
    totals: dict[str, int] = {}
    mountpoint = workspace.mount()
    runner = Exerciser(workspace, mountpoint, rng)
    runner.run(ops)
    runner.snapshot()
    for number in range(branches):
        snap_id, model = rng.choice(runner.snapshots)
        branch_mount = workspace.mount(snap_id, name=f"branch{number}")
        child = Exerciser(workspace, branch_mount, rng, read_model(branch_mount, model))
        child.run(ops // 2)
        child.snapshot()
        runner.snapshots += child.snapshots
        for name, count in child.counts.items():
            totals[name] = totals.get(name, 0) + count
    for name, count in runner.counts.items():
        totals[name] = totals.get(name, 0) + count
    totals["snapshots verified"] = runner.verify_snapshots()
    return totals


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ops", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--branches", type=int, default=3)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="cowfs-soak-"))
    workspace = Workspace(root, root / "store")
    workspace.cli("init")
    try:
        totals = exercise(workspace, args.ops, args.seed, args.branches)
    finally:
        workspace.unmount_all()
    print(" ".join(f"{k}={v}" for k, v in sorted(totals.items())))
    print(f"fsck: {workspace.cli('fsck', check=False).stdout.strip().splitlines()[-1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
