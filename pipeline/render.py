"""`mithril-build render --profile P DIR`: every file the build generates for a profile, written
out for review and checks, with no image, weights, GPU or network: the mkosi configuration (with
the firewall rules, units and the k3s config), the app disk's manifests, NetworkPolicies,
Caddyfile, setup.d/run.d, and the Triton model repository. What the lock does not pin yet is
marked (an image reference ends in `@sha256:UNRESOLVED`) and listed in RENDERED.json, never
made up.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

from . import images, sandbox
from .errors import BadInput
from .graph import Context
from .lock import LOCK_FILE
from .oci_read import ImageConfig, read_image
from .stages import appdisk, os_image

INDEX = "RENDERED.json"


def image_refs(ctx: Context, unresolved: list[str]) -> dict[str, str]:
    """The image references the manifests name, as the build would set them."""
    refs = {name: recipe.ref for name, recipe in images.RECIPES.items()}
    if ctx.profile.app == "demo":
        refs["app"] = f"{appdisk.DEMO_IMAGE}:1"
    app = images.app_lock_image(ctx)
    for name in images.lock_images(ctx):
        pin = ctx.lock.images.get(name)
        if pin is None:
            raise BadInput(LOCK_FILE, f"images.{name}: no such entry", "add its `ref`")
        if pin.digest:
            ref = pin.pinned_ref
        elif pin.archive is not None and pin.archive.sha256:
            ref = pin.ref  # an archive pinned by sha256 (your own image)
        else:
            ref = f"{pin.ref}@{appdisk.UNRESOLVED}"
            unresolved.append(f"images.{name}.digest")
        refs["app" if name == app else name] = ref
    return refs


def _config(ctx: Context, name: str, unresolved: list[str]) -> ImageConfig:
    """An image's config without building or unpacking it: from its recipe, or from the archive
    in the project (your own image)."""
    if name in images.RECIPES:
        r = images.RECIPES[name]
        return ImageConfig(tuple(r.entrypoint), (), tuple(r.env), r.user, "/", ())
    if ctx.profile.app == "demo":
        port = str(ctx.config.appdisk.app_port)
        return ImageConfig(("/bin/busybox", "httpd", "-f", "-p", port, "-h", "/www"), (), (), "65534:65534", "/", ())
    lock_name = images.app_lock_image(ctx) if name == "app" else name
    pin = ctx.lock.image(lock_name, False)
    if pin.archive is None or not pin.archive.path:
        unresolved.append(f"images.{lock_name}.archive")
        return ImageConfig(("UNRESOLVED",), (), (), "", "/", ())
    return read_image(ctx.root / pin.archive.path, f"{LOCK_FILE}: images.{lock_name}.archive").config


def _user(unresolved: list[str]):
    def identity_of(name: str, user: str) -> sandbox.Identity:
        who = sandbox.unresolved_identity(user)
        if who.uid is None or who.gid is None:
            unresolved.append(f"{name}: User {user!r} (a name, resolved in the image's /etc/passwd at build time)")
        return who
    return identity_of


def render(ctx: Context, dest: Path) -> dict:
    """Write the profile's generated files into dest (which must not exist or be empty); return
    the index (also written as dest/RENDERED.json)."""
    from .stages.model_engine import render_repository, triton_serving
    from .orchestrate import settings

    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise BadInput(str(dest), "exists and is not an empty folder", "choose a new folder")
    tmp = dest.parent / f".{dest.name}.rendering"
    shutil.rmtree(tmp, ignore_errors=True)
    unresolved: list[str] = []
    try:
        os_image.render_config(ctx, tmp / "mkosi")
        refs = image_refs(ctx, unresolved)
        services, extras = {}, {}
        if not ctx.profile.os.k3s:
            configs = {n: _config(ctx, n, unresolved) for n in (*appdisk.COMPONENTS, *appdisk.image_services(ctx))}
            services = appdisk.service_args(ctx, configs, _user(unresolved))
            extras = appdisk.extra_ports(ctx, configs)
        triton = None
        if ctx.profile.model:
            m = ctx.config.models[ctx.profile.model]
            render_repository(ctx.root / "model_engine" / "triton", tmp / "model" / "triton", m)
            triton = triton_serving(ctx)
        values = appdisk.manifest_values(ctx, refs, services, triton, extras=extras)
        src = appdisk.source(ctx)
        appdisk.write_rendered(src, tmp / "appdisk", values)
        if ctx.profile.os.k3s:  # also as a file (on the disk it is inside the ConfigMap)
            caddy = tmp / "appdisk" / "caddy" / "Caddyfile"
            caddy.parent.mkdir(parents=True, exist_ok=True)
            caddy.write_text(appdisk._render(appdisk._env(src), "Caddyfile.j2", values))
        files = {p.relative_to(tmp).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
                 for p in sorted(tmp.rglob("*")) if p.is_file()}
        index = {"profile": ctx.profile_name, "settings": settings(ctx), "unresolved": sorted(set(unresolved)),
                 "files": files}
        (tmp / INDEX).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
        if dest.exists():
            dest.rmdir()
        os.replace(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return index


def kubernetes_documents(folder: Path) -> list[Path]:
    """The Kubernetes manifests and NetworkPolicies among the rendered files."""
    return sorted((folder / "appdisk" / "manifests").rglob("*.yaml"))
