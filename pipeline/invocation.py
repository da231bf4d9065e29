"""One command's own state, in one object. `cli.main` starts a fresh `Invocation` for every
command (`begin`); code that records something for the rest of the command, or reuses a result
within it (`once`), reads `current()`. Nothing here outlives the command, so commands run one
after another in one process (the tests' in-process `cli`) never see each other's files, tools
or warnings.

What the warm no-op (noop.py) rests on is collected here: the files hashed, with their identity
when read; the programs whose version went into a cache key; the warnings the build gave.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Invocation:
    hashed: dict[str, list[int] | None] = field(default_factory=dict)  # path: identity when read, None if it changed meanwhile
    tools: set[str] = field(default_factory=set)  # programs whose version went into a cache key
    warnings: list[str] = field(default_factory=list)  # log.warn's lines, in order (a warm no-op repeats them)
    verbose: bool = False  # -v: log every external command (run.py)
    crash_dir: Path | None = None  # the cache of the command's project, once known: crash reports go there
    memo: dict = field(default_factory=dict)  # results of `once` functions


_current = Invocation()  # code run outside a command (a library call, a test) shares this one


def current() -> Invocation:
    return _current


def begin(**settings) -> Invocation:
    """A fresh invocation for the next command; it becomes `current()`."""
    global _current
    _current = Invocation(**settings)
    return _current


def once(fn):
    """Like functools.cache, but only for the current invocation: the next command computes again
    (a tool may have been upgraded, a file edited, and a warning must be given again)."""
    @functools.wraps(fn)
    def wrapper(*args):
        key = (fn, args)
        memo = _current.memo
        if key not in memo:
            memo[key] = fn(*args)
        return memo[key]
    return wrapper
