"""Stage graph, content-addressed stage cache and atomic publishing (DESIGN.md "Contracts").

A stage's cache key is the sha256 of the canonical JSON of everything it declares as input
(`key_inputs`), its version, and the output digests of the stages it depends on. A stage builds
into a fresh temporary folder; only a complete result whose record is written is renamed into
the store, and a cache hit re-checks every output digest before it is reused.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import json
import os
import shutil
import stat
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from . import log
from .config import Config, Profile
from .errors import BadInput, MithrilError
from .lock import InputStore, Lock, atomic_write, sha256_file

RECORD = "_record.json"
SKIP_DIRS = {"__pycache__", ".pytest_cache"}


def canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def digest(obj: Any) -> str:
    return hashlib.sha256(canonical(obj)).hexdigest()


@functools.cache
def tool_version(*argv: str) -> str:
    """First line a tool prints for its version (part of cache keys); 'missing' if absent."""
    from .errors import ToolFailed
    from .run import SYSTEM_PATH, run

    try:
        res = run(list(argv), extra_env={"PATH": SYSTEM_PATH}, ok=range(256))
    except ToolFailed:
        return "missing"
    text = (res.stdout or res.stderr).decode(errors="replace").strip()
    return text.splitlines()[0] if text else "unknown"


def tree_digests(base: Path, *relpaths: str) -> dict[str, str]:
    """{relpath: sha256} of every file under the given paths; executables get a '+x' suffix,
    symlinks are recorded by target. Sorted, independent of mtimes."""
    out: dict[str, str] = {}
    for rel in relpaths:
        top = base / rel
        if not top.exists() and not top.is_symlink():
            continue
        paths = [top] if not top.is_dir() or top.is_symlink() else sorted(
            p for p in top.rglob("*") if not SKIP_DIRS & set(p.relative_to(base).parts))
        for p in paths:
            key = p.relative_to(base).as_posix()
            if p.is_symlink():
                out[key] = "symlink:" + os.readlink(p)
            elif p.is_file():
                x = "+x" if os.stat(p).st_mode & stat.S_IXUSR else ""
                out[key] = sha256_file(p) + x
    return dict(sorted(out.items()))


@dataclass(frozen=True)
class Context:
    root: Path
    config: Config
    profile_name: str
    profile: Profile
    lock: Lock
    store: InputStore
    cache_dir: Path
    out_dir: Path
    locked: bool

    def checkout_digests(self, *relpaths: str) -> dict[str, str]:
        return tree_digests(self.root, *relpaths)

    @property
    def source_date_epoch(self) -> int:
        return self.config.source_date_epoch

    @property
    def seed(self) -> uuid.UUID:
        return self.config.seed


@dataclass(frozen=True)
class StageResult:
    dir: Path
    record: dict

    @property
    def outputs(self) -> dict[str, str]:
        return self.record["outputs"]


class Stage:
    name: ClassVar[str]
    version: ClassVar[int] = 1
    deps: ClassVar[tuple[str, ...]] = ()

    def enabled(self, ctx: Context) -> bool:
        return True

    def key_inputs(self, ctx: Context) -> dict:
        raise NotImplementedError

    def build(self, ctx: Context, out: Path, deps: dict[str, StageResult]) -> dict:
        raise NotImplementedError


def output_digests(folder: Path) -> dict[str, str]:
    return {k: v for k, v in tree_digests(folder, ".").items() if k != RECORD}


@dataclass
class Plan:
    stage: Stage
    key: str | None  # None when a dependency is not built yet
    hit: StageResult | None
    reason: str


@dataclass
class Cache:
    root: Path
    _lockfile: Any = field(default=None, repr=False)

    def stage_dir(self, stage: str) -> Path:
        return self.root / "stages" / stage

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        """One mithril-build at a time per cache; stale temp folders of killed runs are removed."""
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".lock", "w") as lf:
            try:
                fcntl.flock(lf, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                log.info(f"waiting for another mithril-build using {self.root}")
                fcntl.flock(lf, fcntl.LOCK_EX)
            shutil.rmtree(self.root / "tmp", ignore_errors=True)
            yield

    def lookup(self, stage: str, key: str, verify: bool = True) -> StageResult | None:
        folder = self.stage_dir(stage) / key
        rec_path = folder / RECORD
        if not rec_path.is_file():
            return None
        try:
            record = json.loads(rec_path.read_text())
        except ValueError:
            record = None
        if not record or record.get("key") != key:
            self._discard(folder, "its record is unreadable")
            return None
        if verify:
            actual = output_digests(folder)
            if actual != record["outputs"]:
                bad = sorted(k for k in set(actual) | set(record["outputs"])
                             if actual.get(k) != record["outputs"].get(k))
                self._discard(folder, "outputs changed since they were stored: " + ", ".join(bad[:5]))
                return None
        return StageResult(folder, record)

    def _discard(self, folder: Path, why: str) -> None:
        log.warn(f"discarding cached {folder.parent.name} result {folder.name[:12]}: {why}")
        shutil.rmtree(folder, ignore_errors=True)

    def new_tmp(self, stage: str) -> Path:
        (self.root / "tmp").mkdir(parents=True, exist_ok=True)
        path = self.root / "tmp" / f"{stage}-{uuid.uuid4().hex[:8]}"
        path.mkdir()
        return path

    def store(self, stage: str, key: str, tmp: Path, record: dict) -> StageResult:
        """Write the record last, then rename the finished folder into place."""
        atomic_write(tmp / RECORD, json.dumps(record, indent=2, sort_keys=True).encode() + b"\n")
        final = self.stage_dir(stage) / key
        final.parent.mkdir(parents=True, exist_ok=True)
        if final.exists():
            shutil.rmtree(final)
        os.rename(tmp, final)
        return StageResult(final, record)

    def remember(self, stage: str, profile: str, key_fields: dict) -> None:
        atomic_write(self.stage_dir(stage) / f"last-{profile}.json",
                     json.dumps(key_fields, indent=1, sort_keys=True).encode())

    def last(self, stage: str, profile: str) -> dict | None:
        path = self.stage_dir(stage) / f"last-{profile}.json"
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            return None


def explain_diff(old: Any, new: Any, path: str = "") -> list[str]:
    """Human-readable list of the key fields that differ between two key-field trees."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for k in sorted(set(old) | set(new)):
            sub = f"{path}.{k}" if path else str(k)
            if k not in old:
                out.append(f"{sub}: added")
            elif k not in new:
                out.append(f"{sub}: removed")
            else:
                out.extend(explain_diff(old[k], new[k], sub))
        return out
    return [] if old == new else [f"{path}: changed"]


class Orchestrator:
    def __init__(self, ctx: Context, stages: dict[str, type[Stage]]):
        self.ctx = ctx
        self.cache = Cache(ctx.cache_dir)
        self.stages = {name: cls() for name, cls in stages.items()}

    def selected(self, targets: list[str]) -> list[Stage]:
        """The target stages and everything they depend on, in build order, enabled ones only."""
        want: set[str] = set()

        def add(name: str) -> None:
            if name in want:
                return
            want.add(name)
            for dep in self.stages[name].deps:
                if dep in self.stages:
                    add(dep)

        for t in targets:
            if t not in self.stages:
                raise BadInput("command line", f"unknown stage {t!r}", "one of: " + ", ".join(self.stages))
            add(t)
        return [s for n, s in self.stages.items() if n in want and s.enabled(self.ctx)]

    def key_fields(self, stage: Stage, deps: dict[str, StageResult]) -> dict:
        return {"stage": stage.name, "version": stage.version,
                "inputs": stage.key_inputs(self.ctx),
                "deps": {n: r.outputs for n, r in sorted(deps.items())}}

    def plan(self, targets: list[str]) -> list[Plan]:
        """What would run and why, without building (a dependency not built yet means 'run')."""
        plans: list[Plan] = []
        done: dict[str, StageResult] = {}
        for stage in self.selected(targets):
            deps = {d: done[d] for d in stage.deps if d in done}
            missing = [d for d in stage.deps if d not in done and d in self.stages
                       and self.stages[d].enabled(self.ctx)]
            if missing:
                plans.append(Plan(stage, None, None, f"after {', '.join(missing)} is built"))
                continue
            fields = self.key_fields(stage, deps)
            key = digest(fields)
            hit = self.cache.lookup(stage.name, key)
            if hit:
                done[stage.name] = hit
                plans.append(Plan(stage, key, hit, "cached"))
            else:
                plans.append(Plan(stage, key, None, self._why(stage, fields)))
        return plans

    def _why(self, stage: Stage, fields: dict) -> str:
        last = self.cache.last(stage.name, self.ctx.profile_name)
        if last is None:
            return "never built for this profile"
        changed = explain_diff(last, json.loads(canonical(fields)))
        if not changed:
            return "cached result missing or failed verification"
        more = f" (+{len(changed) - 8} more)" if len(changed) > 8 else ""
        return "changed: " + "; ".join(changed[:8]) + more

    def run(self, targets: list[str], explain: bool = False, force: bool = False) -> dict[str, StageResult]:
        results: dict[str, StageResult] = {}
        with self.cache.exclusive():
            for stage in self.selected(targets):
                deps = {d: results[d] for d in stage.deps if d in results}
                fields = self.key_fields(stage, deps)
                key = digest(fields)
                hit = None if force else self.cache.lookup(stage.name, key)
                if hit:
                    log.info(f"✓ {stage.name}: cached ({key[:12]})")
                    results[stage.name] = hit
                else:
                    why = "forced" if force else self._why(stage, fields)
                    if explain:
                        log.info(f"{stage.name}: not cached: {why}")
                    results[stage.name] = self._build(stage, key, fields, deps)
                self.cache.remember(stage.name, self.ctx.profile_name, json.loads(canonical(fields)))
                publish(results[stage.name], stage.name, self.ctx.out_dir)
            write_sha256sums(self.ctx.out_dir)
        return results

    def _build(self, stage: Stage, key: str, fields: dict, deps: dict[str, StageResult]) -> StageResult:
        tmp = self.cache.new_tmp(stage.name)
        start = time.monotonic()
        try:
            with log.step(f"Building {stage.name}", f"Built {stage.name}"):
                extra = stage.build(self.ctx, tmp, deps) or {}
            outputs = output_digests(tmp)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        record = {"stage": stage.name, "key": key, "inputs": fields, "outputs": outputs,
                  **extra, "build_seconds": round(time.monotonic() - start, 1)}
        return self.cache.store(stage.name, key, tmp, record)


RECORDS = "records"  # out/<profile>/records/<stage>.json (appdisk.json and os.json are outputs)
UNSUMMED = {"SHA256SUMS", "boot-serial.log", "deployment.json"}


def publish(result: StageResult, stage: str, out_dir: Path) -> None:
    """Hard-link (or copy) a stage's outputs into out/<profile>/, each file replaced atomically;
    files the previous build of this stage published and this one does not are removed."""
    out_dir.mkdir(parents=True, exist_ok=True)
    rec_path = out_dir / RECORDS / f"{stage}.json"
    with contextlib.suppress(OSError, ValueError, KeyError):
        for old in set(json.loads(rec_path.read_text())["outputs"]) - set(result.outputs):
            (out_dir / old).unlink(missing_ok=True)
    for rel in result.outputs:
        src, dst = result.dir / rel, out_dir / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        tmp = dst.with_name(f".{dst.name}.tmp")
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        if src.is_symlink():
            os.symlink(os.readlink(src), tmp)
        else:
            try:
                os.link(src, tmp)
            except OSError:
                shutil.copy2(src, tmp)
        os.replace(tmp, dst)
    atomic_write(rec_path, json.dumps(result.record, indent=2, sort_keys=True).encode() + b"\n")


def write_sha256sums(out_dir: Path) -> None:
    """SHA256SUMS of the published artifacts (stage records and logs excluded), sorted by path."""
    lines = []
    for path in sorted(out_dir.rglob("*")):
        rel = path.relative_to(out_dir).as_posix()
        if (path.is_file() and not path.name.startswith(".") and rel not in UNSUMMED
                and not rel.startswith(RECORDS + "/")):
            lines.append(f"{sha256_file(path)}  {rel}\n")
    atomic_write(out_dir / "SHA256SUMS", "".join(lines).encode())
