"""The provenance stage: SLSA v1 provenance (in-toto Statement v1) for every published output.

Subjects come from the dependency stages' recorded output digests; resolved dependencies from the
checkout's git commit and mithril.lock. See docs/buildtype-v1.md for what each field means.
"""

from __future__ import annotations

import hashlib
from importlib import metadata
from pathlib import Path

from .. import provenance as prov
from .. import CONFIG_FILE
from ..errors import ToolFailed
from ..graph import Context, Stage, StageResult
from ..lock import LOCK_FILE
from ..run import run


def git_source(root: Path) -> dict:
    """The commit the checkout is at, whether its tree differs from it, and the project's folder
    inside the repository. commit is None outside a git repository (or before the first commit)."""
    try:
        head = run(["git", "rev-parse", "HEAD"], cwd=root, ok=range(256))
    except ToolFailed:
        return {"commit": None, "dirty": True, "subdir": ""}
    if head.returncode != 0:
        return {"commit": None, "dirty": True, "subdir": ""}
    prefix = run(["git", "rev-parse", "--show-prefix"], cwd=root).text.strip().rstrip("/")
    status = run(["git", "status", "--porcelain", "--untracked-files=normal"], cwd=root).text
    return {"commit": head.text.strip(), "dirty": bool(status.strip()), "subdir": prefix}


def _file_sha256(path: Path) -> str | None:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None


def resolved_dependencies(ctx: Context, source: dict) -> list[dict]:
    """ResourceDescriptors for the source commit and every pin in mithril.lock this build uses."""
    lock = ctx.lock
    src: dict = {"name": "source", "annotations": {"dirty": source["dirty"], "subdir": source["subdir"]}}
    if source["commit"]:
        src["digest"] = {"gitCommit": source["commit"]}
    deps = [src]
    if lock.debian:
        deb = {"name": "debian-archive", "annotations": dict(lock.debian)}
        if isinstance(lock.debian.get("mirror"), str):
            deb["uri"] = lock.debian["mirror"]
        deps.append(deb)
    for image, debs in sorted(lock.debs.items()):  # every .deb an image is built from
        for name, pin in sorted(debs.items()):
            deps.append({"name": f"deb:{image}/{name}", "uri": pin.url, "digest": {"sha256": pin.sha256},
                         "annotations": {"version": pin.version}})
    for name, pin in sorted(lock.files.items()):
        d: dict = {"name": f"file:{name}"}
        if pin.url:
            d["uri"] = pin.url
        elif pin.path:
            d["annotations"] = {"path": pin.path}
        if pin.sha256:
            d["digest"] = {"sha256": pin.sha256}
        deps.append(d)
    for name, pin in sorted(lock.images.items()):
        d = {"name": f"image:{name}", "uri": pin.pinned_ref if pin.digest else pin.ref}
        if pin.digest:
            d["digest"] = {"sha256": pin.digest.removeprefix("sha256:")}
        deps.append(d)
    model = ctx.profile.model
    if model:
        repo = ctx.config.models[model].repo
        pin = lock.models.get(model) or next((p for p in lock.models.values() if p.repo == repo), None)
        d = {"name": f"model:{model}", "uri": f"https://huggingface.co/{repo}"}
        if pin and pin.commit:
            d["digest"] = {"gitCommit": pin.commit}
        deps.append(d)
    for name, version in sorted(lock.tools.items()):
        deps.append({"name": f"tool:{name}", "annotations": {"version": version}})
    return deps


def _version() -> str:
    try:
        return metadata.version("mithril-build")
    except metadata.PackageNotFoundError:
        return "unknown"


class Provenance(Stage):
    name = "provenance"
    version = 1
    after = ("model",)  # when the profile has one
    deps = ("os", "appdisk", "measurements")

    def key_inputs(self, ctx: Context) -> dict:
        source = git_source(ctx.root)
        p = ctx.profile
        external = {"profile": ctx.profile_name, "platform": p.platform, "mode": p.mode, "app": p.app}
        if p.model:
            external["model"] = p.model
        internal = {
            "seed": str(ctx.config.seed),
            "sourceDateEpoch": ctx.config.source_date_epoch,
            "configSha256": _file_sha256(ctx.root / CONFIG_FILE),
            "lockSha256": _file_sha256(ctx.root / LOCK_FILE),
        }
        return {"external": external, "internal": internal,
                "dependencies": resolved_dependencies(ctx, source),
                "builder": {"mithril-build": _version()}}

    def build(self, ctx: Context, out: Path, deps: dict[str, StageResult]) -> dict:
        inputs = self.key_inputs(ctx)
        outputs: dict[str, str] = {}
        for name in (*self.after, *self.deps):
            if name in deps:
                outputs.update(deps[name].outputs)
        stmt = prov.statement(prov.subjects_from_outputs(outputs), inputs["external"], inputs["internal"],
                              inputs["dependencies"], inputs["builder"])
        (out / prov.FILE).write_bytes(prov.canonical_line(stmt))
        source = inputs["dependencies"][0]
        return {"subjects": len(stmt["subject"]), "commit": source.get("digest", {}).get("gitCommit"),
                "dirty": source["annotations"]["dirty"]}
