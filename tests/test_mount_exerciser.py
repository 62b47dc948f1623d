"""The random-operation exerciser, bounded for CI (the soak: python tests/exerciser.py --ops 1000000)."""

from __future__ import annotations

from conftest import needs_fuse
from exerciser import exercise

pytestmark = needs_fuse


def test_random_operations_match_the_model_across_snapshots_and_branches(workspace):
    totals = exercise(workspace, ops=3000, seed=20261126, branches=2)
    assert totals["read"] > 500 and totals["snapshots verified"] > 50
    assert workspace.cli("fsck").returncode == 0
