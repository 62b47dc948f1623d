"""`cowfs status` names the one machine setting that makes every FUSE round trip slow on a VM."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from conftest import run_cli
from cowfs.cli.idle_cpus import DRIVER_FILE, HALT_POLL_FILE, SYSFS, IdlePolicy, advice, read_idle_policy


def fake_sysfs(root: Path, driver: str | None, halt_poll: str | None) -> Path:
    if driver is not None:
        (root / DRIVER_FILE).parent.mkdir(parents=True)
        (root / DRIVER_FILE).write_text(driver + "\n")
    if halt_poll is not None:
        (root / HALT_POLL_FILE).parent.mkdir(parents=True)
        (root / HALT_POLL_FILE).write_text(halt_poll + "\n")
    return root


@pytest.mark.parametrize(("driver", "halt_poll", "expected"), [
    ("haltpoll", "0", IdlePolicy("haltpoll", 0)),
    ("haltpoll", "200000", IdlePolicy("haltpoll", 200000)),
    ("intel_idle", None, IdlePolicy("intel_idle", None)),
    (None, None, IdlePolicy(None, None)),
    ("haltpoll", "garbage", IdlePolicy("haltpoll", None)),
])
def test_the_idle_policy_is_read_from_sysfs(tmp_path, driver, halt_poll, expected):
    assert read_idle_policy(fake_sysfs(tmp_path, driver, halt_poll)) == expected


def test_only_a_vm_that_halts_idle_cpus_at_once_gets_advice():
    told = advice(IdlePolicy("haltpoll", 0))
    assert told is not None and f"/sys/{HALT_POLL_FILE}" in told and "200000" in told
    for quiet in (IdlePolicy("haltpoll", 200000), IdlePolicy("haltpoll", None), IdlePolicy("acpi_idle", None),
                  IdlePolicy("intel_idle", 0), IdlePolicy(None, None)):
        assert advice(quiet) is None, quiet


def status_advice(store: Path) -> tuple[str | None, bool]:
    document = json.loads(run_cli("status", "--json", store=store).stdout)
    shown = any(line.startswith("speed ") for line in run_cli("status", store=store).stdout.splitlines())
    return document["speed_advice"], shown


def test_status_shows_the_advice_exactly_when_this_machine_needs_it(tmp_path):
    run_cli("init", store=tmp_path / "store")
    knob = SYSFS / HALT_POLL_FILE
    policy = read_idle_policy()
    if policy.driver != "haltpoll" or os.geteuid() != 0:
        # Nothing to switch on this machine: what status says must follow what sysfs says.
        expected = advice(policy)
        assert status_advice(tmp_path / "store") == (expected, expected is not None)
        return
    original = knob.read_text()
    try:
        knob.write_text("0")
        told, shown = status_advice(tmp_path / "store")
        assert shown and told is not None and str(knob) in told
        knob.write_text("200000")
        assert status_advice(tmp_path / "store") == (None, False)
    finally:
        knob.write_text(original)
