"""What the build commands do: run stages, plan, status, clean, lock refresh."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
from pathlib import Path

from . import gpu, log, platforms
from .cache import RECORDS
from .files import sha256_file
from .graph import Context, Orchestrator
from .inputs import download, export, verify_folder
from .lock import FilePin


def _orchestrator(ctx: Context) -> Orchestrator:
    from .stages import STAGES

    return Orchestrator(ctx, STAGES)


def stages_of(ctx: Context) -> list:
    """The profile's enabled stages, in build order."""
    orch = _orchestrator(ctx)
    return orch.selected(list(orch.stages))


def profile_pins(ctx: Context) -> dict[str, FilePin]:
    """{lock entry: pin} of every file the profile's enabled stages fetch."""
    pins: dict[str, FilePin] = {}
    for stage in stages_of(ctx):
        pins.update(stage.pins(ctx))
    return dict(sorted(pins.items()))


def export_inputs(ctx: Context, dest: Path) -> dict:
    """`export-inputs`: every external input of the profile's build into dest (inputs.export)."""
    return export(ctx.store, profile_pins(ctx), ctx.profile_name, dest)


def build(ctx: Context, targets: list[str] | None, explain: bool = False, force: bool = False) -> dict:
    orch = _orchestrator(ctx)
    targets = targets or list(orch.stages)
    if ctx.store.offline is not None:
        verify_folder(ctx.store.offline, profile_pins(ctx))
    log.info(ctx.headline)
    return orch.run(targets, explain=explain, force=force)


def plan(ctx: Context, targets: list[str] | None) -> list[dict]:
    orch = _orchestrator(ctx)
    return [{"stage": p.stage.name, "deps": orch.deps_of(p.stage),
             "cached": p.hit is not None, "key": p.key, "reason": p.reason}
            for p in orch.plan(targets or list(orch.stages))]


def settings(ctx: Context) -> dict:
    """The profile as the build sees it: the resolved os section, then the platform's (azure)."""
    p = ctx.profile
    return {"platform": p.platform, "mode": p.mode, "app": p.app, "model": p.model,
            "os": p.os.model_dump(mode="json"), **platforms.get(p.platform).settings(p)}


def status(ctx: Context) -> dict:
    orch = _orchestrator(ctx)
    stages = []
    for p in orch.plan(list(orch.stages)):
        published = (ctx.out_dir / "records" / f"{p.stage.name}.json").exists()
        state = "cached" if p.hit else ("stale" if published else "not built")
        stages.append({"stage": p.stage.name, "state": state, "key": p.key or "", "reason": p.reason})
    with orch.cache.shared():
        size = _size(ctx.cache_dir)
    return {"profile": ctx.profile_name, "out_dir": str(ctx.out_dir), "cache_dir": str(ctx.cache_dir),
            "cache_bytes": size, "stages": stages}


def _size(folder: Path) -> int:
    total = 0
    for top, _, files in os.walk(folder):
        for name in files:
            with contextlib.suppress(OSError):  # a temporary file of another command went away
                total += os.lstat(os.path.join(top, name)).st_size
    return total


def published_keys(out_dir: Path) -> dict[str, str]:
    """{stage: cache key} of the results published in an out/<profile> folder."""
    keys = {}
    for rec in sorted((out_dir / RECORDS).glob("*.json")) if (out_dir / RECORDS).is_dir() else []:
        with contextlib.suppress(OSError, ValueError, AttributeError, RecursionError):
            key = json.loads(rec.read_text()).get("key")
            if isinstance(key, str) and re.fullmatch(r"[0-9a-f]{64}", key):
                keys[rec.stem] = key
    return keys


def clean(ctx: Context, everything: bool, outputs: bool, all_profiles: bool = False) -> list[str]:
    """Remove this profile's cached stage results (those published in out/<profile>, unless another
    profile of the project published the same result); with all_profiles every stage result;
    with everything the whole cache (inputs and Debian indices too). Waits for a running build."""
    orch = _orchestrator(ctx)
    done = []
    with orch.cache.exclusive():
        if everything or all_profiles:
            for name in ("stages", *(["inputs", "debian"] if everything else [])):
                path = ctx.cache_dir / name
                if path.exists():
                    shutil.rmtree(path)
                    done.append(f"removed {path}")
        else:
            others = {(s, k) for d in (ctx.root / "out").glob("*") if d != ctx.out_dir and d.is_dir()
                      for s, k in published_keys(d).items()}
            for stage, key in published_keys(ctx.out_dir).items():
                path = orch.cache.stage_dir(stage) / key
                if (stage, key) in others:
                    done.append(f"kept {path} (another profile's output too)")
                elif path.is_dir():
                    shutil.rmtree(path)
                    done.append(f"removed {path}")
            for last in orch.cache.root.glob(f"stages/*/last-{ctx.profile_name}.json"):
                last.unlink()
        if outputs and ctx.out_dir.exists():
            shutil.rmtree(ctx.out_dir)
            done.append(f"removed {ctx.out_dir}")
    return done or ["nothing to clean"]


def profile_inputs(ctx: Context) -> tuple[list[str], list[str]]:
    """(image names, model names) in mithril.lock that the profile's stages declare."""
    entries = [e.split(".", 1) for stage in stages_of(ctx) for e in stage.lock_entries(ctx)]

    def names(section: str) -> list[str]:
        return list(dict.fromkeys(n for s, n in entries if s == section))
    return names("images"), names("models")


def pin_driver_rim(ctx: Context, pin, entry: dict, now=None) -> str:
    """files.nvidia-driver-rim: fetch the RIM from NVIDIA's RIM service (its URL: <service>/<id>),
    check its signature and chain now, write it into the checkout at `path`, pin sha256 and checked_at."""
    import datetime as dt
    import hashlib

    from mithril_client.gpu import online
    from mithril_client.gpu.rim import parse_rim

    from .errors import BadInput, ToolFailed
    from .files import atomic_write

    base, _, rim_id = pin.url.rstrip("/").rpartition("/")
    try:
        raw = online.fetch_rim(rim_id, online.Online(rim_service=base + "/"))
    except online.Unreachable as e:
        raise ToolFailed(f"files.{gpu.DRIVER_RIM_PIN}: {e}") from None
    now = (now or dt.datetime.now(dt.timezone.utc)).replace(microsecond=0)
    rim = parse_rim(raw, pin.url)
    if problem := rim.problem(now):
        raise BadInput(f"files.{gpu.DRIVER_RIM_PIN}", f"{pin.url}: {problem}")
    if gpu.driver_rim_id(rim.version) != rim_id:
        raise BadInput(f"files.{gpu.DRIVER_RIM_PIN}", f"{pin.url} holds the RIM of driver {rim.version}")
    target = (ctx.root / pin.path).resolve()
    if not target.is_relative_to(ctx.root.resolve()):
        raise BadInput(f"files.{gpu.DRIVER_RIM_PIN}.path", f"{pin.path!r} points outside the project")
    target.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(target, raw)
    entry.update(sha256=hashlib.sha256(raw).hexdigest(), size=len(raw), checked_at=now.strftime("%Y-%m-%dT%H:%M:%SZ"))
    return f"pinned now (signature and chain to NVIDIA's RIM root checked at {entry['checked_at']})"


def refresh_lock(ctx: Context, check: bool = False, force_models: bool = False, update_debs: bool = False) -> dict:
    """Report the lock entries the selected profile uses and, unless `check`, pin what can be
    resolved from here: unpinned files (fetched, trust on first use), the .debs of the images
    built here (signed Debian indices; re-resolved with `update_debs`), image digests (registry),
    the model (Hub commit and file digests; re-resolved with `force_models`), the OS package
    versions of the profile's last build, the mkosi version."""
    import tempfile

    from . import lock as lk
    from .errors import MithrilError
    from .graph import tool_version

    data = ctx.lock.model_dump(mode="json", exclude_none=True)
    entries: list[dict] = []

    def note(entry: str, state: str) -> None:
        entries.append({"entry": entry, "state": state})

    def attempt(entry: str, fn) -> None:
        if check:
            return note(entry, "unresolved")
        try:
            note(entry, fn())
        except MithrilError as e:
            lines = str(e).splitlines()
            note(entry, "unresolved: " + lines[0])
            if len(lines) > 1:  # e.g. the tail of a failed build's output: the table keeps one line
                log.warn(f"{entry}: " + "\n".join(lines))

    for name, pin in sorted(ctx.lock.files.items()):
        if pin.sha256:
            note(f"files.{name}", "pinned")
        elif name == gpu.DRIVER_RIM_PIN and pin.url and pin.path:
            attempt(f"files.{name}", lambda pin=pin: pin_driver_rim(ctx, pin, data["files"][gpu.DRIVER_RIM_PIN]))
        elif pin.url:
            def fetch(name=name, pin=pin):
                with tempfile.TemporaryDirectory() as tmp:
                    path = Path(tmp) / "f"
                    download(pin.url, path, f"files.{name}")
                    data["files"][name].update(sha256=sha256_file(path), size=path.stat().st_size)
                return "pinned now (trust on first use: check the source)"
            attempt(f"files.{name}", fetch)
        else:
            note(f"files.{name}", "unresolved: needs url or path")

    from . import images as built

    for name, recipe in built.RECIPES.items():  # both apps build all of them
        have = ctx.lock.debs.get(name, {})
        if have and all(p in have for p in recipe.packages) and not (update_debs and not check):
            note(f"debs.{name}", f"pinned ({len(have)} packages)")
            continue

        def resolve_debs(name=name, recipe=recipe, have=have):
            pins = built.resolve(ctx.lock.debian, ctx.cache_dir / "debian", recipe)
            data.setdefault("debs", {})[name] = pins
            if pins == {n: p.model_dump(mode="json") for n, p in have.items()}:
                return f"pinned, unchanged ({len(pins)} packages)"
            roots = ", ".join(f"{p} {pins[p]['version']}" for p in recipe.packages)
            return f"pinned now ({len(pins)} packages: {roots})"
        attempt(f"debs.{name}", resolve_debs)

    want_images, want_models = profile_inputs(ctx)
    for name in want_images:
        pin = ctx.lock.images.get(name)
        if pin is None:
            note(f"images.{name}", "unresolved: no entry (add its `ref`)")
            continue
        if pin.digest:
            note(f"images.{name}", f"pinned {pin.digest}")
            continue

        def resolve(name=name, pin=pin):
            from .container import resolve_image_digest

            data["images"][name]["digest"] = resolve_image_digest(pin.ref)
            return f"pinned now {data['images'][name]['digest']}"
        attempt(f"images.{name}", resolve)

    for name in want_models:
        pin = ctx.lock.models.get(name)
        if pin and pin.commit and pin.files and not force_models:
            note(f"models.{name}", f"pinned {pin.repo}@{pin.commit[:12]} ({len(pin.files)} files)")
            continue

        def resolve_model(name=name):
            from .hf import hub_token, resolve_model_lock

            m = ctx.config.models[name]
            data.setdefault("models", {})[name] = resolve_model_lock(m.repo, m.revision, hub_token(),
                                                                     m.allow_patterns)
            return f"pinned now {m.repo}@{data['models'][name]['commit'][:12]}"
        attempt(f"models.{name}", resolve_model)

    from .stages.os_image import debs_key

    key = debs_key(ctx.profile.os)  # debs.os, or debs.os-nvidia for a GPU image
    have_os = ctx.lock.debs.get(key)
    missing = os_debs_missing(ctx, have_os or {})
    if check or (have_os and not missing and not update_debs):
        state = (f"pinned ({len(have_os)} packages)" if have_os and not missing else
                 f"unresolved: lacks {', '.join(missing)}" if have_os else "unresolved: run `mithril-build lock`")
        note(f"debs.{key}", state)
    else:
        def resolve_os():
            os_debs = os_build_debs(ctx)
            # debs.<key> serves every profile of that kind: keep the pins other profiles use, take
            # this build's versions for what it installed (an older driver package would mix versions).
            keep = {} if update_debs else {n: p.model_dump(mode="json") for n, p in (have_os or {}).items()
                                           if n not in os_debs and gpu.source_of(p.url) not in gpu.DRIVER_SOURCES}
            data.setdefault("debs", {})[key] = dict(sorted({**keep, **os_debs}.items()))
            data.setdefault("debian", {})["snapshot"] = snapshot_stamp()
            return f"pinned now ({len(os_debs)} packages, from an online build of the OS image)"
        attempt(f"debs.{key}", resolve_os)
    mkosi = tool_version("mkosi", "--version").removeprefix("mkosi ").strip()
    if not check and mkosi != "missing":
        data.setdefault("tools", {})["mkosi"] = mkosi

    unpinned = sum(e["state"].startswith("unresolved") for e in entries)
    if not check:
        new = lk.Lock.model_validate(data)
        if new != ctx.lock:
            lk.dump(new, ctx.root / lk.LOCK_FILE)
    return {"entries": entries, "unpinned": unpinned}


def os_build_debs(ctx: Context) -> dict:
    """Build the OS image online (the lock's debs.os / debs.os-nvidia set aside) and return the pins
    of every .deb it used, as the stage recorded them (each checked against the signed Debian index)."""
    import dataclasses
    import json

    from .stages.os_image import debs_key

    key = debs_key(ctx.profile.os)
    lock = ctx.lock.model_copy(update={"debs": {k: v for k, v in ctx.lock.debs.items() if k != key}})
    # The package set does not depend on k3s (a binary from files.k3s, no .deb; tested), whose
    # pins may be unreachable: the online build leaves it out.
    osc = ctx.profile.os.model_copy(update={"k3s": False})
    profile = ctx.profile.model_copy(update={"os": osc})
    result = build(dataclasses.replace(ctx, lock=lock, locked=False, profile=profile), ["os"])["os"]
    return json.loads((result.dir / "packages.json").read_text())["debs"]


def os_debs_missing(ctx: Context, have: dict) -> list[str]:
    """The driver and kernel packages a GPU profile needs that debs.os-nvidia does not pin (at the
    driver version, the held kernel version)."""
    if not ctx.profile.os.nvidia:
        return []
    want = {**{n: gpu.DRIVER_VERSION for n in gpu.DRIVER_PACKAGES},
            **{n: gpu.KERNEL_VERSION for n in (ctx.profile.os.kernel_package, *gpu.KERNEL_PACKAGES)}}
    return [n for n, v in want.items() if n not in have or have[n].version != v]


def snapshot_stamp() -> str:
    """snapshot.debian.org's timestamp for now: the archive state the new pins were taken from."""
    import datetime as dt

    return dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
