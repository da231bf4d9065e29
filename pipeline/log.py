"""Timed, nested step lines and tqdm progress bars, all on stderr."""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterator

from . import invocation

_depth = 0
quiet = False


def info(msg: str) -> None:
    if not quiet:
        print("  " * _depth + msg, file=sys.stderr, flush=True)


def warn(msg: str) -> None:
    invocation.current().warnings.append("warning: " + msg)
    print("  " * _depth + "warning: " + msg, file=sys.stderr, flush=True)


@contextlib.contextmanager
def step(doing: str, done: str | None = None) -> Iterator[None]:
    """`with step("Building app disk", "Built app disk"):` prints both lines, the second timed."""
    global _depth
    info(f"▶ {doing}…")
    start = time.monotonic()
    _depth += 1
    try:
        yield
    except BaseException:
        _depth -= 1
        info(f"✗ {doing} failed after {time.monotonic() - start:.1f} s")
        raise
    _depth -= 1
    info(f"✓ {done or doing} ({time.monotonic() - start:.1f} s)")


def progress(total: int | None, desc: str, unit: str = "B"):
    """A tqdm bar on stderr; bytes are shown scaled. Only on a terminal: in a log or a pipe a bar
    would leave carriage-return fragments in front of the next line."""
    from tqdm import tqdm

    return tqdm(
        total=total,
        desc="  " * _depth + desc,
        unit=unit,
        unit_scale=unit == "B",
        unit_divisor=1024 if unit == "B" else 1000,
        file=sys.stderr,
        disable=quiet or not _is_tty(sys.stderr),
        leave=False,
        mininterval=0.5,
    )


def _is_tty(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or closed
        return False
