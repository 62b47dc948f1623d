"""Whether this machine makes every file operation in the workspace wait for a sleeping CPU.

A FUSE request is a round trip between two processes: the caller sleeps until the daemon has
answered, and the daemon sleeps until the next request comes. Each wake-up of a CPU that went
idle in between is cheap on bare metal, but on a virtual machine it is an exit to the
hypervisor unless the guest polls for a while before it halts. Linux guests on KVM do that
through the ``haltpoll`` cpuidle driver, whose ``guest_halt_poll_ns`` is 200 µs by default; an
image that sets it to 0 (to save the host's CPU) makes each round trip pay two such wake-ups.
On the project's 2-core VM that setting alone took a warm ``import`` of the scientific stack
from 1.36 to 1.19 s and a ``git checkout`` of 1,250 files and back from 0.70 to 0.36 s, while
native runs did not change (docs/benchmarks.md, session 21).

The daemon cannot change it (it is the machine's, and root's), so ``cowfs status`` says so and
names the setting. Reading sysfs is all this module does; the advice is a pure function of
what it read, so it can be checked against any machine's values."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

SYSFS = Path("/sys")
DRIVER_FILE = "devices/system/cpu/cpuidle/current_driver"
HALT_POLL_FILE = "module/haltpoll/parameters/guest_halt_poll_ns"
SUGGESTED_HALT_POLL_NS = 200_000  # the kernel's own default for the haltpoll driver


@dataclass(frozen=True)
class IdlePolicy:
    """How idle CPUs wait on this machine; ``None`` where sysfs does not say."""

    driver: str | None
    halt_poll_ns: int | None

    @property
    def halts_at_once(self) -> bool:
        """A virtual machine's CPUs halt as soon as they idle: each round trip waits for the
        hypervisor to wake the daemon's CPU, then the caller's."""
        return self.driver == "haltpoll" and self.halt_poll_ns == 0

    def describe(self) -> str:
        if self.driver is None:
            return "cpuidle unknown"
        poll = "" if self.halt_poll_ns is None else f", guest_halt_poll_ns {self.halt_poll_ns}"
        return f"cpuidle {self.driver}{poll}"


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def read_idle_policy(sysfs: Path = SYSFS) -> IdlePolicy:
    poll = _read(sysfs / HALT_POLL_FILE)
    return IdlePolicy(driver=_read(sysfs / DRIVER_FILE),
                      halt_poll_ns=int(poll) if poll is not None and poll.isdigit() else None)


def advice(policy: IdlePolicy) -> str | None:
    """What to tell the user, if anything: the setting, its effect, and the command (root)."""
    if not policy.halts_at_once:
        return None
    return ("this virtual machine halts idle CPUs at once (guest_halt_poll_ns is 0), so every file "
            "operation in a mount waits for two CPU wake-ups; imports, pip and git run up to 2x "
            f"faster with `echo {SUGGESTED_HALT_POLL_NS} | sudo tee /sys/{HALT_POLL_FILE}` "
            f"(the kernel's default; it lets an idle CPU poll for {SUGGESTED_HALT_POLL_NS // 1000} µs "
            "before it halts)")
