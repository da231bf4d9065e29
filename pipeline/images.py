"""Container images built here from Debian packages pinned in mithril.lock (`debs.<image>`), no
registry: the recipes, and a reproducible single-layer OCI archive from the pinned .debs. Also
which registry images (lock `images:`) a profile's app disk carries.

The .debs are unpacked as dpkg would (data.tar only); no maintainer script runs, so the images
hold no dpkg database, no generated caches and nothing apt could manage. Only declared
dependencies are installed: Essential packages (shell, coreutils, …) are not implied. Owners are
root:root, mtimes SOURCE_DATE_EPOCH, members sorted.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import stat
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from . import gpu, invocation, log
from .archive import Entry, deb_data, tar_entries
from .errors import BadInput, ToolFailed
from .files import SKIP_DIRS, atomic_write, tree_digests
from .graph import Context
from .lock import LOCK_FILE, DebPin
from .modules import package_dir
from .oci import image_archive

SOURCE_DIR = "opt/mithril"
# Our packages an image carries, and the distribution that installs each (client/, server/).
DISTRIBUTIONS = {"mithril_client": "mithril-client", "attestation_server": "mithril-attestation-server"}
PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass(frozen=True)
class Recipe:
    name: str  # the archive is images/<name>.tar, the lock entry debs.<name>
    packages: tuple[str, ...]  # root packages; their Pre-Depends + Depends closure is installed
    excludes: tuple[tuple[str, str], ...]  # (package, why the image does without it)
    entrypoint: tuple[str, ...]
    user: str = "0:0"
    env: tuple[str, ...] = (PATH,)
    ports: tuple[str, ...] = ()  # appdisk settings holding the exposed (tcp) ports
    trees: tuple[str, ...] = ()  # our packages (DISTRIBUTIONS), copied under /opt/mithril

    @property
    def ref(self) -> str:
        return f"localhost/mithril-{self.name}:1"


RECIPES = {r.name: r for r in (
    Recipe("caddy", packages=("caddy",),
           excludes=(("libnss3-tools", "certutil, which only `caddy trust` runs to add Caddy's CA to the NSS "
                                       "stores of desktop browsers; with it go libnss3, libnspr4, libsqlite3-0"),),
           entrypoint=("/usr/bin/caddy",), user="65534:65534", ports=("ingress_port",)),
    Recipe("attestation-server", packages=("python3", "python3-cryptography"),
           excludes=(("dpkg", "python3-minimal and readline-common depend on it for their maintainer scripts, "
                              "which never run here; with it go tar, libselinux1, libacl1, libmd0, libzstd1"),),
           entrypoint=("/usr/bin/python3", "-m", "attestation_server"),
           # Read-only root: no .pyc is written (none is shipped either); unbuffered output for the logs.
           env=(PATH, f"PYTHONPATH=/{SOURCE_DIR}", "PYTHONDONTWRITEBYTECODE=1", "PYTHONUNBUFFERED=1"),
           ports=("attestation_port",), trees=("attestation_server", "mithril_client")),
)}

# Documentation a container never reads (as in Debian's "slim" images); copyright files stay.
_DROP = ("usr/share/man", "usr/share/info", "usr/share/lintian")
# The same bytes as the demo image's accounts: root and the unprivileged nobody:nogroup.
PASSWD = b"root:x:0:0:root:/:/bin/sh\nnobody:x:65534:65534::/:/bin/false\n"
GROUP = b"root:x:0:\nnogroup:x:65534:\n"


def accounts() -> list[Entry]:
    return [Entry("etc", 0o755), Entry("etc/passwd", 0o644, PASSWD), Entry("etc/group", 0o644, GROUP)]


def source_trees(recipe: Recipe) -> dict[str, Path]:
    """{package: folder} of the recipe's packages. One that is missing stops the build: an image
    without it would fail only when it runs."""
    out = {}
    for tree in recipe.trees:
        if (top := package_dir(tree)) is None:
            raise ToolFailed(f"image {recipe.name}: Python package {tree} not found "
                             f"(pip install {DISTRIBUTIONS.get(tree, tree)})")
        out[tree] = top
    return out


def app_lock_image(ctx: Context) -> str | None:
    """The lock image that is the app: triton for llm, appdisk.app_image for app `image`."""
    return {"llm": "triton", "image": ctx.config.appdisk.app_image}.get(ctx.profile.app)


def lock_images(ctx: Context) -> list[str]:
    """The registry images (lock `images:`) the app disk carries: the app's, the NVIDIA device
    plugin with a GPU, the extra ones (the recipes' images and the demo app are built here)."""
    app = app_lock_image(ctx)
    out = ([app] if app else []) + ([gpu.DEVICE_PLUGIN] if ctx.profile.os.nvidia else [])
    return out + [n for n in ctx.config.appdisk.extra_images if n not in out]


def key_inputs(ctx: Context) -> dict:
    """What the images depend on besides code: the pins, and the digests of the source trees."""
    return {name: {"debs": pins(ctx, r), "sources": _sources(r)} for name, r in RECIPES.items()}


def _sources(recipe: Recipe) -> dict[str, str]:
    """{package/relpath: sha256} of the recipe's packages, wherever each is installed."""
    out: dict[str, str] = {}
    for tree, top in source_trees(recipe).items():
        out |= tree_digests(top.parent, tree)  # a package's folder bears its name
    return dict(sorted(out.items()))


# ---------------------------------------------------------------------------------------------
# Pins

def pins(ctx: Context, recipe: Recipe) -> dict[str, dict]:
    """{package: pin} for the recipe from mithril.lock. Under --unlocked an image that is not
    pinned (or whose pins miss a root package) is resolved from the archive instead."""
    pinned = ctx.lock.debs.get(recipe.name, {})
    missing = [p for p in recipe.packages if p not in pinned]
    if not missing:
        return {name: pin.model_dump(mode="json") for name, pin in sorted(pinned.items())}
    what = f"debs.{recipe.name}: " + ("not pinned" if not pinned else f"does not pin {', '.join(missing)}")
    if ctx.locked:
        raise BadInput(LOCK_FILE, what + " (--locked)", "run `mithril-build lock` where the Debian archive is reachable")
    return _resolved(json.dumps(ctx.lock.debian, sort_keys=True), ctx.cache_dir / "debian", recipe, what)


@invocation.once  # the stage asks twice (cache key, then build): resolve and warn once
def _resolved(debian_json: str, cache: Path, recipe: Recipe, what: str) -> dict[str, dict]:
    log.warn(f"{what}; resolving from the Debian archive (run `mithril-build lock` to pin it)")
    return resolve(json.loads(debian_json), cache, recipe)


def resolve(debian_cfg: Mapping, cache: Path, recipe: Recipe) -> dict[str, dict]:
    """The recipe's closure in the lock's suites, as lock entries."""
    from . import debian

    res = debian.resolve(debian.archive(debian_cfg, cache), recipe.packages, dict(recipe.excludes),
                         f"image {recipe.name}")
    return {name: p.pin() for name, p in res.packages.items()}


# ---------------------------------------------------------------------------------------------
# Building

def build(ctx: Context, recipe: Recipe) -> tuple[bytes, str]:
    """(archive bytes, manifest digest) of one image. Every .deb comes from the input store,
    re-hashed against its pin on every use."""
    items = sorted(pins(ctx, recipe).items())
    # Four downloads at a time: a cold build is dominated by per-request latency (36 small .debs).
    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(ctx.store.pinned, DebPin(**pin).file(), f"debs.{recipe.name}.{name}")
                   for name, pin in items]
    debs = {name: f.result() for (name, _), f in zip(items, futures)}  # the first failure in name order
    ports = [getattr(ctx.config.appdisk, p) for p in recipe.ports]
    return assemble(recipe, debs, ctx.source_date_epoch, ports)


def write(ctx: Context, name: str, output: Path) -> dict:
    """Build the image called `name` into `output` (atomically)."""
    if name not in RECIPES:
        raise BadInput("command line", f"no image {name!r}", "one of: " + ", ".join(RECIPES))
    with log.step(f"Building the {name} image", f"Built the {name} image"):
        data, digest = build(ctx, RECIPES[name])
    atomic_write(output, data)
    return {"name": name, "ref": RECIPES[name].ref, "manifest_digest": digest,
            "sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}


def assemble(recipe: Recipe, debs: Mapping[str, Path], mtime: int, ports: Iterable[int] = ()) -> tuple[bytes, str]:
    """The image from already-verified .debs (package name -> file) and this checkout's trees."""
    rootfs = Rootfs(f"image {recipe.name}")
    for name, deb in sorted(debs.items()):
        for e in tar_entries(deb_data(deb), f"{LOCK_FILE}: debs.{recipe.name}.{name} ({deb.name})"):
            if not _dropped(e.path):
                rootfs.add(e, name)
    for e in [*accounts(), Entry("tmp", 0o1777)]:
        rootfs.add(e, "mithril")
    for tree, top in source_trees(recipe).items():
        for e in _tree_entries(top, f"{SOURCE_DIR}/{tree}"):
            rootfs.add(e, tree + "/")
    return image_archive(recipe.ref.rsplit(":", 1)[0], recipe.ref.rsplit(":", 1)[1], rootfs.entries(),
                         entrypoint=recipe.entrypoint, mtime=mtime, exposed_ports=sorted(ports),
                         user=recipe.user, env=recipe.env)


def _dropped(path: str) -> bool:
    parts = path.split("/")
    if parts[:3] == ["usr", "share", "doc"]:  # keep usr/share/doc/<pkg>/copyright: the licences
        return len(parts) > 4 and parts[4:] != ["copyright"]
    return any(path == d or path.startswith(d + "/") for d in _DROP)


def _tree_entries(top: Path, dest: str) -> list[Entry]:
    """Our own source: folders 0755, files 0644 (0755 if executable), no bytecode, no symlinks."""
    out = [Entry(dest, 0o755)]
    for p in sorted(top.rglob("*")):
        rel = p.relative_to(top)
        if SKIP_DIRS & set(rel.parts) or p.suffix == ".pyc":  # what the cache key skips, and bytecode
            continue
        path = f"{dest}/{rel.as_posix()}"
        if p.is_symlink():
            raise BadInput(f"{top.name}/{rel.as_posix()}", "is a symlink; image source trees hold plain files only")
        if p.is_dir():
            out.append(Entry(path, 0o755))
        elif p.is_file():
            out.append(Entry(path, 0o755 if os.stat(p).st_mode & stat.S_IXUSR else 0o644, p.read_bytes()))
    return out


class Rootfs:
    """The image's files by path. Two packages may ship the same path only with identical
    content (type, mode, bytes or target): dpkg would refuse the overwrite, and so do we."""

    def __init__(self, where: str):
        self.where = where
        self.items: dict[str, tuple[Entry, str]] = {}

    def add(self, e: Entry, origin: str) -> None:
        # setuid/setgid bits are useless in a container that never changes user, and a risk.
        e = Entry(e.path, e.mode & ~(stat.S_ISUID | stat.S_ISGID), e.data, e.target, e.link)
        have = self.items.get(e.path)
        if have is None:
            self.items[e.path] = (e, origin)
        elif _content(have[0]) != _content(e):
            raise BadInput(self.where, f"/{e.path} is shipped by both {have[1]} and {origin} with different "
                                       f"content", "exclude one of the packages or fix the source tree")

    def entries(self) -> list[Entry]:
        """All entries, with missing parent folders (0755) and each hardlink group written once:
        the first path in tar order holds the data, the others link to it."""
        items = {p: e for p, (e, _) in self.items.items()}
        for path in list(items):
            parent = posixpath.dirname(path)
            while parent and parent not in items:
                items[parent] = Entry(parent, 0o755)
                parent = posixpath.dirname(parent)
        groups: dict[str, list[str]] = {}
        for path, e in items.items():
            if e.link is not None:
                groups.setdefault(e.link, []).append(path)
        for target, links in groups.items():
            members = sorted(links + ([target] if target in items and items[target].link is None else []))
            first = items[members[0]]
            items[members[0]] = Entry(members[0], first.mode, first.data)
            for path in members[1:]:
                items[path] = Entry(path, first.mode, link=members[0])
        return sorted(items.values(), key=lambda e: e.path)


def _content(e: Entry) -> tuple:
    return ("dir" if e.is_dir else "link" if e.target is not None else "file", e.mode, e.data, e.target)
