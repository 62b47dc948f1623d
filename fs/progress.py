"""How long store operations (fsck, gc, import) say how far they are.

The engine only calls a function; whether anything is shown, and how, is the caller's business
(the CLI draws a line on a terminal and stays quiet otherwise)."""

from __future__ import annotations

from typing import Callable

# phase, items done, items in all (0 when not known in advance)
Progress = Callable[[str, int, int], None]


def silent(phase: str, done: int, total: int) -> None:
    """The default: report nothing."""
