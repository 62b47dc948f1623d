"""`cowfs diff` of consecutive snapshots from the paths the daemon named as changed (issue 12:
what a cell changed, at the cost of the change): always the same answer as walking both trees."""

from __future__ import annotations

import json
import os
import random
import shutil

from conftest import drop_caches, needs_fuse

pytestmark = needs_fuse


def random_step(rng: random.Random, mnt) -> None:
    files = [p for p in mnt.rglob("*") if p.is_file() and not p.is_symlink() and ".cowfs" not in p.parts]
    dirs = [mnt] + [p for p in mnt.rglob("*") if p.is_dir() and not p.is_symlink() and ".cowfs" not in p.parts]
    action = rng.choice(["create", "create", "rewrite", "append", "truncate", "unlink", "rename", "mkdir",
                         "rename_dir", "remove_tree", "chmod", "symlink", "hardlink", "nothing"])
    target = rng.choice(files) if files else None
    if action == "create" or target is None:
        (rng.choice(dirs) / f"f{rng.randrange(10**6)}").write_bytes(os.urandom(rng.randrange(1, 300_000)))
    elif action == "rewrite":
        target.write_bytes(os.urandom(target.stat().st_size))  # same size: only the content differs
    elif action == "append":
        with open(target, "ab") as handle:
            handle.write(b"more")
    elif action == "truncate":
        os.truncate(target, rng.randrange(0, target.stat().st_size + 1))
    elif action == "unlink":
        target.unlink()
    elif action == "rename":
        target.rename(rng.choice(dirs) / (rng.choice(files).name if rng.random() < 0.3 else f"m{rng.randrange(10**6)}"))
    elif action == "mkdir":
        (rng.choice(dirs) / f"d{rng.randrange(10**6)}").mkdir(exist_ok=True)
    elif action == "rename_dir" and len(dirs) > 1:
        moved = rng.choice(dirs[1:])
        destination = rng.choice([d for d in dirs if not d.is_relative_to(moved)])
        moved.rename(destination / f"r{rng.randrange(10**6)}")
    elif action == "remove_tree" and len(dirs) > 1:
        shutil.rmtree(rng.choice(dirs[1:]))
    elif action == "chmod":
        target.chmod(rng.choice([0o600, 0o644, 0o755]))
    elif action == "symlink":
        os.symlink(target.name, rng.choice(dirs) / f"l{rng.randrange(10**6)}")
    elif action == "hardlink":
        os.link(target, rng.choice(dirs) / f"h{rng.randrange(10**6)}")
        if rng.random() < 0.5:  # written through one name, changed under both
            with open(target, "ab") as handle:
                handle.write(b"both names")


def test_named_changes_give_the_walks_answer(workspace):
    mnt = workspace.mount()
    rng = random.Random(20261202)
    for i in range(5):
        (mnt / f"base{i}").mkdir()
        for j in range(20):
            (mnt / f"base{i}" / f"f{j}").write_bytes(os.urandom(rng.randrange(1, 50_000)))
    snapshots = [workspace.snap(mnt, "start")]
    for step in range(50):
        for _ in range(rng.randrange(1, 4)):
            random_step(rng, mnt)
        if step % 17 == 5:
            drop_caches()  # the kernel forgets inodes: their names with them
        snapshots.append(workspace.snap(mnt, f"step {step}"))
    workspace.cli("snap", "--wait", str(mnt))
    by_id = {s["id"]: s for s in json.loads(workspace.cli("log", "--json").stdout)}
    named = 0
    from click.testing import CliRunner

    from cowfs.cli.main import cli

    def diff(*args: str) -> list:
        """The real `cowfs diff`, in this process: 100 interpreter starts were a third of the test."""
        result = CliRunner().invoke(cli, ["--store", str(workspace.store), "diff", "--json", "--all", *args])
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout)

    for before, after in zip(snapshots, snapshots[1:]):
        fast = diff(before["id"], after["id"])
        walked = diff("--walk", before["id"], after["id"])
        assert fast == walked, (before["id"], after["id"], by_id[after["id"]]["meta"].get("changed_paths"))
        named += isinstance(by_id[after["id"]]["meta"].get("changed_paths"), list)
    assert named >= 35, f"only {named} of 50 snapshots named their changes"
