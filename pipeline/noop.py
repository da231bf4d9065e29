"""The warm no-op: `mithril-build all` with nothing to do, answered without loading the build.

After a successful `all`, a memo in <cache>/noop/ lists every file and folder that answer rests
on (the checkout, the pipeline's code, the tools in cache keys, the cached results, out/<profile>,
an --inputs or --engine-dir folder) with its identity (files.identity). While every identity is
unchanged, the next `all` with the same options and environment prints the answer from the memo.
Any change (an edit, a touch, a file replaced, removed, or added to a folder) falls back to the
full run, which re-hashes every output. A write always moves a file's ctime, so a tampered output
is never trusted; `all --verify` re-hashes everything regardless.

The command calls `start` before it loads anything else, and `finish` after a successful full
run; what the run hashed and probed comes from its Invocation (invocation.py).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from .cache import Cache
from .files import SKIP_DIRS, atomic_write, identity
from .invocation import Invocation
from .modules import ROOTS

VERSION = 1
FOLDER = "noop"  # <cache>/noop/<key>.json

Identities = dict[str, "list[int] | None"]


def tree(top: Path, skip: frozenset[str] = frozenset()) -> Identities:
    """Identities of top and of everything below it (paths in skip and SKIP_DIRS left out)."""
    top_s = os.path.abspath(top)
    out = {top_s: identity(top_s)}
    for dirpath, dirs, files in os.walk(top_s):
        dirs[:] = [d for d in dirs if d not in SKIP_DIRS and os.path.join(dirpath, d) not in skip]
        for name in dirs + files:
            path = os.path.join(dirpath, name)
            if path not in skip:
                out[path] = identity(path)
    return out


def checkout(root: Path, cache_dir: Path) -> Identities:
    """The project as a build may read it (everything but out/, the cache and top-level dot
    folders such as .git and .mithril), and the pipeline's own code."""
    skip = {os.path.join(root, n) for n in os.listdir(root) if n.startswith(".") or n == "out"}
    files = tree(root, frozenset(skip | {os.path.abspath(cache_dir)}))
    for package, folder in ROOTS.items():  # what stage fingerprints cover (modules.closure)
        if not (folder / package).is_relative_to(root):
            files.update(tree(folder / package))
    return files


def key(options: dict) -> str:
    """The memo's name: a digest of the options and the environment that reaches the build
    (secrets among it are hashed, never stored)."""
    env = {k: v for k, v in os.environ.items() if k == "PATH" or k.startswith(("MITHRIL_", "HF_"))}
    data = json.dumps({"version": VERSION, "env": env, **options}, sort_keys=True, default=str)
    return hashlib.sha256(data.encode()).hexdigest()


@dataclass(frozen=True)
class Pending:
    """A full run under way: what its memo will be named and rest on."""

    cache_dir: Path
    name: str
    before: Identities


def start(project: Path | None, cache_dir: Path | None, options: dict, full: bool) -> list[str] | Pending:
    """The remembered answer's lines if nothing it rests on changed (and no `full` run was asked
    for), else what the full run remembers when it succeeds (`finish`)."""
    from . import project as proj

    root = proj.find_root(project)
    cache = proj.cache_path(root, cache_dir)
    name = key({"root": root, "cache": cache, **options})
    lines = None if full else replay(cache, name)
    if lines is not None:
        return lines
    return Pending(cache, name, checkout(root, cache))


def replay(cache_dir: Path, name: str) -> list[str] | None:
    """The lines of the remembered answer if nothing it rests on changed, else None."""
    try:
        memo = json.loads((cache_dir / FOLDER / f"{name}.json").read_text())
        files, lines = memo["files"], memo["lines"]
        if memo["version"] != VERSION or not isinstance(files, dict) or not isinstance(lines, list):
            return None
    except (OSError, ValueError, KeyError, TypeError, RecursionError):
        return None
    with Cache(cache_dir).shared():  # a build under way is waited for, not read half-done
        if not files or any(identity(p) != ident for p, ident in files.items()):
            return None
    return [str(line) for line in lines]


def finish(run: Pending, ctx, results: dict, inv: Invocation) -> None:
    """After a successful full `all` (ctx: its graph.Context; results: its stage results): remember
    the answer a run with nothing to do gives, the lines this one printed: the headline, the
    warnings, every stage cached."""
    from .graph import cached_line  # the full run has loaded it anyway

    lines = [ctx.headline, *inv.warnings, *(cached_line(n, r.record["key"]) for n, r in results.items())]
    remember(run, results, ctx.out_dir, [ctx.store.offline, ctx.engine_dir], lines, inv)


def remember(run: Pending, results: dict, out_dir: Path, folders: list[Path | None], lines: list[str],
             inv: Invocation) -> None:
    """Write the memo of a successful `all`, unless something it rests on changed during the run
    (the next run then simply takes the full path)."""
    from .run import SYSTEM_PATH  # the full run has loaded it anyway

    if any(identity(p) != ident for p, ident in run.before.items()):
        return
    files = dict(run.before)
    for result in results.values():
        files.update(tree(result.dir))
    files.update(tree(out_dir))
    for folder in folders:  # given on the command line: --inputs, --engine-dir
        if folder is not None:
            files.update(tree(folder))
    for tool in sorted(inv.tools):
        found = shutil.which(tool, path=SYSTEM_PATH)
        for path in {found, os.path.realpath(found)} if found else {tool}:
            files[os.path.abspath(path)] = identity(path)
    if any(p in files and files[p] != ident for p, ident in inv.hashed.items()):
        return  # hashed, then changed: this run's answer does not hold for the file as it is now
    atomic_write(run.cache_dir / FOLDER / f"{run.name}.json",
                 json.dumps({"version": VERSION, "files": files, "lines": lines}, sort_keys=True).encode())
