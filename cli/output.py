"""How the CLI shows sizes, times and tables to a person."""

from __future__ import annotations

import contextlib
import json
import sys
import time
from typing import Iterator

import click

from cowfs.fs.progress import Progress, silent


def human_size(count: int | None) -> str:
    if count is None:
        return "-"
    size = float(count)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(size) < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{count} B"


def human_time(stamp: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(stamp))


def table(rows: list[list[str]], header: list[str]) -> None:
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows)]
    for row in [header, *rows]:
        click.echo("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)).rstrip())


def emit_json(document: object) -> None:
    click.echo(json.dumps(document, indent=2, sort_keys=True))


class TerminalProgress:
    """One line on stderr, redrawn at most ten times a second, erased when the work ends."""

    def __init__(self) -> None:
        self._shown_at = 0.0
        self._drawn = False

    def __call__(self, phase: str, done: int, total: int) -> None:
        now = time.monotonic()
        if now - self._shown_at < 0.1:
            return
        self._shown_at = now
        count = f"{done:,}/{total:,}" if total else f"{done:,}"
        sys.stderr.write(f"\r\x1b[K{phase}: {count}")
        sys.stderr.flush()
        self._drawn = True

    def erase(self) -> None:
        if self._drawn:
            sys.stderr.write("\r\x1b[K")
            sys.stderr.flush()


@contextlib.contextmanager
def progress_on_terminal(quiet: bool = False) -> Iterator[Progress]:
    """Progress for a person watching: shown only when stdout is a terminal (not in scripts,
    pipes or with --json)."""
    if quiet or not sys.stdout.isatty() or not sys.stderr.isatty():
        yield silent
        return
    shown = TerminalProgress()
    try:
        yield shown
    finally:
        shown.erase()
