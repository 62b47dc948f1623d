"""The random-operation exerciser, bounded for CI (the soak, a million operations:
python tests/exerciser.py --ops 500000 --branches 2)."""

from __future__ import annotations

from conftest import needs_fuse
from exerciser import exercise

pytestmark = needs_fuse


def test_random_operations_match_the_model_across_snapshots_and_branches(workspace):
    totals = exercise(workspace, ops=10000, seed=20261126, branches=2)
    assert totals["read"] > 2000 and totals["snapshots verified"] > 200
    assert workspace.cli("fsck").returncode == 0
