"""Stage graph, content-addressed stage cache and atomic publishing (README: "How the cache works").

A stage's cache key is the sha256 of the canonical JSON of everything it declares as input
(`key_inputs`, and the mithril.lock entries of `lock_entries`), its version and code, and the
output digests of the stages it depends on. A stage builds into a fresh temporary folder; only a
complete result whose record is written is renamed into the store, and a cache hit re-checks
every output digest before it is reused.
"""

from __future__ import annotations

import json
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from . import invocation, log
from .cache import Cache, StageResult, output_digests, publish, write_sha256sums
from .config import Config, Profile
from .errors import BadInput
from .files import canonical, digest, sha256_file, tree_digests
from .inputs import InputStore
from .lock import LOCK_FILE, DebPin, FilePin, Lock


def cached_line(stage: str, key: str) -> str:
    return f"✓ {stage}: cached ({key[:12]})"


@invocation.once
def tool_version(*argv: str) -> str:
    """First line a tool prints for its version (part of cache keys); 'missing' if absent."""
    from .errors import ToolFailed
    from .run import SYSTEM_PATH, run

    invocation.current().tools.add(argv[0])  # the warm no-op rests on them
    try:
        res = run(list(argv), extra_env={"PATH": SYSTEM_PATH}, ok=range(256))
    except ToolFailed:
        return "missing"
    text = (res.stdout or res.stderr).decode(errors="replace").strip()
    return text.splitlines()[0] if text else "unknown"


@invocation.once
def code_digest(stage_cls: type) -> str:
    """sha256 over the code a stage runs: its module and every module of ours it imports,
    transitively (modules.closure), named by their module name so that it holds wherever the
    packages are installed."""
    from . import modules

    code = modules.closure(stage_cls.__module__, modules.ROOTS)
    return digest({name: sha256_file(path) for name, path in code.items()})


@dataclass(frozen=True)
class Context:
    """What every stage sees. Command-line overrides reach stages here and nowhere else: --profile
    and --model as `profile`, --locked, --inputs as `store.offline`, --cache-dir, --engine-dir."""

    root: Path
    config: Config
    profile_name: str
    profile: Profile
    lock: Lock
    store: InputStore
    cache_dir: Path
    out_dir: Path
    locked: bool
    engine_dir: Path | None = None  # --engine-dir: import this engine instead of models.<name>.engine_dir

    @property
    def headline(self) -> str:
        """The first line of a build: which profile, on what, how."""
        p = self.profile
        return (f"profile {self.profile_name}: platform {p.platform}, mode {p.mode}, app {p.app}"
                + (f", model {p.model}" if p.model else "") + (", --locked" if self.locked else ""))

    def checkout_digests(self, *relpaths: str) -> dict[str, str]:
        return tree_digests(self.root, *relpaths)

    @property
    def source_date_epoch(self) -> int:
        return self.config.source_date_epoch

    @property
    def seed(self) -> uuid.UUID:
        return self.config.seed


class Stage:
    name: ClassVar[str]
    version: ClassVar[int] = 1
    deps: ClassVar[tuple[str, ...]] = ()  # stages it needs: one disabled or missing is bad config
    after: ClassVar[tuple[str, ...]] = ()  # stages it reads when the profile enables them
    # Folders and files of the project (relative to its root) the stage reads: their digests are
    # part of its key. Its code is found, not declared (code_digest).
    data: ClassVar[tuple[str, ...]] = ()

    def enabled(self, ctx: Context) -> bool:
        return True

    def key_inputs(self, ctx: Context) -> dict:
        """Everything but its lock entries and dependencies that the result depends on."""
        raise NotImplementedError

    def lock_entries(self, ctx: Context) -> list[str]:
        """The mithril.lock entries this stage builds from ("files.k3s", "debs.caddy",
        "images.triton", "models.gpt2-medium"), declared here only: the cache key holds them,
        `pins` (export-inputs, checks of checkout files) and `lock` (what to resolve) read them."""
        return []

    def deb_pins(self, ctx: Context, name: str) -> dict[str, DebPin]:
        """The .debs of its entry debs.<name> that the stage installs: the lock's, unless the
        stage resolves what is not pinned yet."""
        return ctx.lock.debs.get(name, {})

    def pins(self, ctx: Context) -> dict[str, FilePin]:
        """The external files of `lock_entries` ({lock entry: pin}): what `export-inputs` writes,
        so that `--inputs` can build offline. (Models come from the Hub's cache, not from here.)"""
        out: dict[str, FilePin] = {}
        for entry in self.lock_entries(ctx):
            section, name = entry.split(".", 1)
            if section == "files":
                out[entry] = ctx.lock.file(name)
            elif section == "debs":
                out.update({f"{entry}.{n}": p.file() for n, p in sorted(self.deb_pins(ctx, name).items())})
            elif section == "images":
                archive = ctx.lock.image(name, ctx.locked).archive
                if archive is not None and archive.url:  # an archive in the checkout travels with it
                    out[f"{entry}.archive"] = archive
        return out

    def check(self, ctx: Context) -> None:
        """Check inputs the cache key names only by their pin (files in the checkout), on every
        run, cache hit or not: a file edited after it was pinned must not pass for the pinned one."""
        for entry in self.lock_entries(ctx):  # a labelled stand-in (FilePin.stand_in): say so, or refuse
            section, name = entry.split(".", 1)
            pin = ctx.lock.files.get(name) if section == "files" else \
                getattr(ctx.lock.images.get(name), "archive", None) if section == "images" else None
            if pin is not None and pin.stand_in:
                where = entry + (".archive" if section == "images" else "")
                if ctx.locked:
                    raise BadInput(LOCK_FILE, f"{where}: a stand-in, not the real input ({pin.stand_in}), refused with --locked",
                                   "pin the real file with `mithril-build lock` where its source is reachable")
                log.warn(f"{where}: a STAND-IN, not the real input: {pin.stand_in}")
        try:
            pins = self.pins(ctx)
        except BadInput:  # an entry not pinned yet is the build's error: `plan` still shows the plan
            return
        for what, pin in pins.items():
            if pin.path:
                ctx.store.pinned(pin, what)

    def build(self, ctx: Context, out: Path, deps: dict[str, StageResult]) -> dict:
        raise NotImplementedError


@dataclass
class Plan:
    stage: Stage
    key: str | None  # None when a dependency is not built yet
    hit: StageResult | None
    reason: str


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


class _Stages(dict):
    """name -> Stage instance, made on first use. A value of the registry is a Stage class or
    "module:Class" (relative to pipeline.stages), so that a command imports only the stages it
    touches: a no-op build stays fast."""

    def __init__(self, registry: dict):
        super().__init__((name, None) for name in registry)
        self._registry = registry

    def __getitem__(self, name: str) -> Stage:
        stage = super().__getitem__(name)
        if stage is None:
            cls = self._registry[name]
            if isinstance(cls, str):
                import importlib

                module, attr = cls.split(":")
                cls = getattr(importlib.import_module(module, "pipeline.stages"), attr)
            stage = cls()
            super().__setitem__(name, stage)
        return stage

    def items(self):
        return [(name, self[name]) for name in self]

    def values(self):
        return [self[name] for name in self]


class Orchestrator:
    def __init__(self, ctx: Context, stages: dict[str, type[Stage]]):
        self.ctx = ctx
        self.cache = Cache(ctx.cache_dir)
        self.stages = _Stages(stages)

    def deps_of(self, stage: Stage) -> list[str]:
        """The stages whose results `stage` is given: its deps, and those of `after` enabled."""
        return [d for d in (*stage.after, *stage.deps)
                if d in stage.deps or d in self.stages and self.stages[d].enabled(self.ctx)]

    def selected(self, targets: list[str]) -> list[Stage]:
        """The enabled target stages and everything they depend on, in build order: dependencies
        first (graphlib), ties in registry order. An enabled stage whose dependency is missing
        or disabled is bad configuration, named with both."""
        from graphlib import CycleError, TopologicalSorter

        want: dict[str, list[str]] = {}

        def add(name: str) -> None:
            if name in want:
                return
            want[name] = []  # while its dependencies are added (a cycle is found below)
            stage = self.stages[name]
            for dep in (*stage.after, *stage.deps):
                if dep not in self.stages:
                    raise BadInput("pipeline/stages/__init__.py", f"stage {name!r} depends on {dep!r}, which is no stage",
                                   "one of: " + ", ".join(self.stages))
                if not self.stages[dep].enabled(self.ctx):
                    if dep in stage.deps:
                        raise BadInput(f"mithril.yaml: profiles.{self.ctx.profile_name}",
                                       f"stage {name!r} needs stage {dep!r}, which this profile disables",
                                       f"enable {dep!r} in the profile, or do not build {name!r}")
                    continue
                add(dep)
            want[name] = self.deps_of(stage)

        for t in targets:
            if t not in self.stages:
                raise BadInput("command line", f"unknown stage {t!r}", "one of: " + ", ".join(self.stages))
            if self.stages[t].enabled(self.ctx):
                add(t)
        order = list(self.stages)
        sorter = TopologicalSorter({n: want[n] for n in order if n in want})
        try:
            sorter.prepare()
        except CycleError as e:
            raise BadInput("pipeline/stages/__init__.py", "stages depend on each other in a cycle: "
                           + " -> ".join(e.args[1])) from None
        out, ready = [], set()
        while sorter.is_active():
            ready |= set(sorter.get_ready())
            name = min(ready, key=order.index)  # of the stages ready, the first in registry order
            ready.remove(name)
            out.append(self.stages[name])
            sorter.done(name)
        return out

    def key_fields(self, stage: Stage, deps: dict[str, StageResult], inputs: dict) -> dict:
        return {"stage": stage.name, "version": stage.version, "code": code_digest(type(stage)),
                "data": self.ctx.checkout_digests(*stage.data), **inputs[stage.name], "deps": {n: r.outputs for n, r in sorted(deps.items())}}

    def preflight(self, stages: list[Stage]) -> dict[str, dict]:
        """Every stage's inputs and lock entries, read and checked before anything is built or
        published: bad input fails here, with out/ and the cache untouched."""
        inputs = {}
        for stage in stages:
            lock = {e: self.ctx.lock.entry(*e.split(".", 1)) for e in stage.lock_entries(self.ctx)}
            inputs[stage.name] = {"inputs": stage.key_inputs(self.ctx), "lock": lock}
            stage.check(self.ctx)
        return inputs

    def plan(self, targets: list[str]) -> list[Plan]:
        """What would run and why, without building (a dependency not built yet means 'run').
        Read-only: takes the cache's shared lock and discards nothing."""
        plans: list[Plan] = []
        done: dict[str, StageResult] = {}
        stages = self.selected(targets)
        inputs = self.preflight(stages)
        with self.cache.shared():
            for stage in stages:
                deps = {d: done[d] for d in self.deps_of(stage) if d in done}
                missing = [d for d in self.deps_of(stage) if d not in done]
                if missing:
                    plans.append(Plan(stage, None, None, f"after {', '.join(missing)} is built"))
                    continue
                fields = self.key_fields(stage, deps, inputs)
                key = digest(fields)
                hit = self.cache.lookup(stage.name, key, discard=False)
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
        """Build the targets and what they depend on; `force` rebuilds the targets themselves only.
        Results are published into out/<profile>/ only once every stage has succeeded."""
        results: dict[str, StageResult] = {}
        stages = self.selected(targets)
        inputs = self.preflight(stages)
        with self.cache.exclusive():
            remembered = {}
            for stage in stages:
                deps = {d: results[d] for d in self.deps_of(stage)}
                fields = self.key_fields(stage, deps, inputs)
                key = digest(fields)
                forced = force and stage.name in targets
                hit = None if forced else self.cache.lookup(stage.name, key)
                if hit:
                    log.info(cached_line(stage.name, key))
                    results[stage.name] = hit
                else:
                    why = "forced" if forced else self._why(stage, fields)
                    if explain:
                        log.info(f"{stage.name}: not cached: {why}")
                    results[stage.name] = self._build(stage, key, fields, deps)
                remembered[stage.name] = fields
            for stage in stages:
                self.cache.remember(stage.name, self.ctx.profile_name, json.loads(canonical(remembered[stage.name])))
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
