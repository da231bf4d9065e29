"""What the build commands do: run stages, plan, status, clean, lock refresh."""

from __future__ import annotations

import shutil

from . import log
from .graph import Context, Orchestrator


def _orchestrator(ctx: Context) -> Orchestrator:
    from .stages import STAGES

    return Orchestrator(ctx, STAGES)


def build(ctx: Context, targets: list[str] | None, explain: bool = False, force: bool = False) -> dict:
    orch = _orchestrator(ctx)
    targets = targets or list(orch.stages)
    log.info(f"profile {ctx.profile_name}: platform {ctx.profile.platform}, mode {ctx.profile.mode}, "
             f"app {ctx.profile.app}" + (f", model {ctx.profile.model}" if ctx.profile.model else "")
             + (", --locked" if ctx.locked else ""))
    return orch.run(targets, explain=explain, force=force)


def plan(ctx: Context, targets: list[str] | None) -> list[dict]:
    orch = _orchestrator(ctx)
    return [{"stage": p.stage.name, "deps": [d for d in p.stage.deps if d in orch.stages and orch.stages[d].enabled(ctx)],
             "cached": p.hit is not None, "key": p.key, "reason": p.reason}
            for p in orch.plan(targets or list(orch.stages))]


def status(ctx: Context) -> dict:
    orch = _orchestrator(ctx)
    size = sum(p.stat().st_size for p in ctx.cache_dir.rglob("*") if p.is_file()) if ctx.cache_dir.exists() else 0
    stages = []
    for p in orch.plan(list(orch.stages)):
        published = (ctx.out_dir / "records" / f"{p.stage.name}.json").exists()
        state = "cached" if p.hit else ("stale" if published else "not built")
        stages.append({"stage": p.stage.name, "state": state, "key": p.key or "", "reason": p.reason})
    return {"profile": ctx.profile_name, "out_dir": str(ctx.out_dir), "cache_dir": str(ctx.cache_dir),
            "cache_bytes": size, "stages": stages}


def clean(ctx: Context, everything: bool, outputs: bool) -> list[str]:
    orch = _orchestrator(ctx)
    done = []
    with orch.cache.exclusive():
        for name in ("stages", "tmp", *(["inputs"] if everything else [])):
            path = ctx.cache_dir / name
            if path.exists():
                shutil.rmtree(path)
                done.append(f"removed {path}")
    if outputs and ctx.out_dir.exists():
        shutil.rmtree(ctx.out_dir)
        done.append(f"removed {ctx.out_dir}")
    return done or ["nothing to clean"]


def refresh_lock(ctx: Context, check: bool = False) -> dict:
    """Report (and where possible resolve) every lock entry. Placeholder until all resolvers land."""
    entries, unpinned = [], 0
    for name, pin in sorted(ctx.lock.files.items()):
        ok = bool(pin.sha256)
        unpinned += not ok
        entries.append({"entry": f"files.{name}", "state": "pinned" if ok else "unresolved"})
    for name, pin in sorted(ctx.lock.images.items()):
        ok = bool(pin.digest)
        unpinned += not ok
        entries.append({"entry": f"images.{name}", "state": f"pinned {pin.digest[:19]}…" if ok else "unresolved"})
    return {"entries": entries, "unpinned": unpinned}
