"""The application disk: a staged tree (manifests, images, setup.d/run.d, model repository)
turned into a squashfs + dm-verity GPT disk (`verity_build.py`), byte-for-byte reproducibly.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import shutil
import stat
import tempfile
import uuid
from pathlib import Path

from .. import images, log, sandbox, templates, verity_build
from ..archive import Entry, deb_member
from ..errors import BadInput
from ..files import sha256_file
from ..lock import LOCK_FILE, DebPin, ImagePin
from ..graph import Context, Stage, StageResult, tool_version
from ..oci import image_archive
from ..oci_read import check_archive, unpack
from ..records import TritonServing, read

SOURCE = "appdisk"
DISK = "application_disk.raw"
RECORD = "appdisk.json"
LABELS = ("app", "app-verity")  # data and hash partitions (appdisk/repart.d)
DEMO_IMAGE = "localhost/mithril-demo"
UNRESOLVED = "sha256:UNRESOLVED"  # `render` marks an image whose digest the lock does not pin yet
COMPONENTS = ("app", "caddy", "attestation-server")  # ingress -> caddy -> app | attestation server
STATE = "/run/mithril"  # the guest's tmpfs state folder (measured-setup, setup.d, run.d)
TLS_DIR, ATTESTATION_STATE = f"{STATE}/tls", f"{STATE}/attestation"
GOSU_FILE = "gosu"  # lock files.gosu: Debian's static gosu, how image services drop to their user


def components(ctx: Context) -> list[str]:
    return list(COMPONENTS)


class AppDisk(Stage):
    name = "appdisk"
    version = 4
    after = ("model",)
    data = (SOURCE,)

    def key_inputs(self, ctx: Context) -> dict:
        check_templates(ctx.root / SOURCE)
        return {
            "config": {"appdisk": ctx.config.appdisk.model_dump(mode="json"), "app": ctx.profile.app,
                       "model": ctx.profile.model, "k3s": ctx.profile.os.k3s, "platform": ctx.profile.platform,
                       "seed": str(ctx.seed), "source_date_epoch": ctx.source_date_epoch},
            "images": images.key_inputs(ctx),  # debs pins and our source trees, per built image
            "tools": {"mksquashfs": tool_version("mksquashfs", "-version"),
                      "systemd-repart": tool_version("systemd-repart", "--version")},
        }

    def lock_entries(self, ctx: Context) -> list[str]:
        demo = ["files.busybox-static"] if ctx.profile.app == "demo" else []
        demo += [] if ctx.profile.os.k3s else [f"files.{GOSU_FILE}"]
        return demo + [f"debs.{n}" for n in images.RECIPES] + [f"images.{n}" for n in images.lock_images(ctx)]

    def deb_pins(self, ctx: Context, name: str) -> dict[str, DebPin]:
        return {n: DebPin(**p) for n, p in images.pins(ctx, images.RECIPES[name]).items()}

    def check(self, ctx: Context) -> None:
        """Image archives of the checkout (`init --image`): their pin, and that they are images.
        (An archive not pinned yet is the build's error, so that `plan` still shows the plan.)"""
        super().check(ctx)
        for name in images.lock_images(ctx):
            pin = ctx.lock.images.get(name)
            archive = pin.archive if pin else None
            if archive and archive.path and archive.sha256:
                where = f"{LOCK_FILE}: images.{name}.archive ({archive.path})"
                ctx.store.pinned(archive, f"images.{name}.archive", check=lambda p, w=where: check_archive(p, w))

    def build(self, ctx: Context, out: Path, deps: dict[str, StageResult]) -> dict:
        with tempfile.TemporaryDirectory(dir=out.parent, prefix="appdisk-work-") as work:
            work = Path(work)
            tree = work / "tree"
            with log.step("Staging the application tree", "Staged the application tree"):
                archives, ports = stage_tree(ctx, tree, deps.get("model"))
                files = file_manifest(tree)
            with log.step("Making the squashfs and dm-verity images", "Made squashfs and verity"):
                env = {"SOURCE_DATE_EPOCH": str(ctx.source_date_epoch)}
                data = verity_build.squashfs(tree, work / "data.img", ("-all-root", "-no-xattrs"), env)
                vimages = verity_build.hash_tree(data, work / "hash.img", ctx.seed)
            with log.step("Assembling the GPT disk with systemd-repart", "Assembled the disk"):
                layout = assemble(ctx, work, vimages, out / DISK)
        params = vimages.params
        record = {
            "roothash": vimages.roothash.hex(),
            "disk": layout,
            "verity": {"data_block_size": params.data_block_size, "hash_block_size": params.hash_block_size,
                       "data_blocks": params.data_blocks, "salt": params.salt.hex(),
                       "uuid": str(uuid.UUID(bytes=params.uuid)), "algorithm": params.algorithm},
            "images": archives,
            "apps": ports,  # {service: port}: what `run` probes through the ingress (no k3s)
            "files": files,
        }
        (out / RECORD).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
        return {"roothash": vimages.roothash.hex()}


def _render(env, rel: str, values: dict) -> str:
    return templates.render(env, rel, values, f"{SOURCE}/{rel}")


def check_templates(src: Path) -> None:
    """Every template of appdisk/ decodes and parses (they render only during the build)."""
    env = _env(src)
    for path in sorted(src.rglob("*.j2")) if src.is_dir() else []:
        rel = path.relative_to(src).as_posix()
        templates.check_syntax(env, rel, f"{SOURCE}/{rel}")


def stage_tree(ctx: Context, tree: Path, model: StageResult | None) -> tuple[list[dict], dict[str, int]]:
    src = source(ctx)
    tree.mkdir()
    archives, refs = build_images(ctx, tree / "images")
    services, extras = {}, {}
    if not ctx.profile.os.k3s:  # no container runtime: each image runs from its own unpacked root (run.d)
        services, extras = unpack_services(ctx, tree)
    triton = engine_sha256 = None
    if model is not None:
        shutil.copytree(model.dir / "model_repository", tree / "model", symlinks=True)
        shutil.copy2(model.dir / "engine.json", tree / "model" / "engine.json")
        triton, engine_sha256 = read(model.dir, TritonServing), model.outputs.get("engine.json")
    values = manifest_values(ctx, refs, services, triton, engine_sha256, extras)
    write_rendered(src, tree, values)
    normalise(tree)
    return archives, {"app": ctx.config.appdisk.app_port, **extras}


def source(ctx: Context) -> Path:
    src = ctx.root / SOURCE
    if not src.is_dir():
        raise BadInput(str(src), "folder missing", "run `mithril-build init` to get a starter project")
    check_source_links(src)
    return src


def manifest_values(ctx: Context, refs: dict[str, str], services: dict[str, str], triton: TritonServing | None,
                    engine_sha256: str | None = None, extras: dict[str, int] | None = None) -> dict:
    """Everything the templates of appdisk/ see (`triton` and `engine_sha256` from the model stage)."""
    from .. import gpu

    cfg = ctx.config.appdisk
    k3s = ctx.profile.os.k3s
    values = {"namespace": cfg.namespace, "ingress_port": cfg.ingress_port, "app_port": cfg.app_port,
              "attestation_port": cfg.attestation_port, "app": ctx.profile.app, "components": components(ctx),
              "images": refs, "model": ctx.profile.model, "triton": None, "platform": ctx.profile.platform,
              "k3s": k3s, "tls_dir": TLS_DIR, "model_host_path": f"{STATE}/model",
              "upstreams": upstreams(ctx, k3s), "services": services, "extras": extras or {},
              "gpu": {"resource": gpu.RESOURCE, "lib_dir": gpu.LIB_DIR, "libs": list(gpu.LIBS),
                      "container_lib_dir": gpu.CONTAINER_LIB_DIR} if ctx.profile.os.nvidia else None}
    if triton is not None:
        values["triton"] = {**triton.model_dump(mode="json"), "engine_sha256": engine_sha256}
    return values


def write_rendered(src: Path, tree: Path, values: dict) -> None:
    """The app disk's text files for these values: Caddyfile (no k3s), manifests and
    NetworkPolicies, setup.d/ and run.d/ (templates rendered)."""
    env = _env(src)
    if not values["k3s"]:
        (tree / "caddy").mkdir(parents=True, exist_ok=True)
        (tree / "caddy" / "Caddyfile").write_text(_render(env, "Caddyfile.j2", values))
    for rel, text in render_manifests(env, src, values).items():
        (tree / rel).parent.mkdir(parents=True, exist_ok=True)
        (tree / rel).write_text(text)
    for folder in ("setup.d", "run.d"):
        if not any((src / folder / n).is_file() for n in ("main", "main.j2")):
            raise BadInput(f"{SOURCE}/{folder}/main", "missing", "every app disk needs setup.d/main and run.d/main")
        shutil.copytree(src / folder, tree / folder, symlinks=True)
        for tpl in sorted((tree / folder).rglob("*.j2")):  # entry points may be templates too
            rel = tpl.relative_to(tree).as_posix()
            tpl.with_suffix("").write_text(_render(env, rel, values))
            os.chmod(tpl.with_suffix(""), os.stat(tpl).st_mode)
            tpl.unlink()


def _env(src: Path):
    return templates.environment(src, SOURCE)


def render_manifests(env, src: Path, values: dict) -> dict[str, str]:
    """{path on the disk: text} of the Kubernetes manifests and NetworkPolicies for these values.
    A template that renders empty does not apply to this app and is left out."""
    values = {**values, "caddyfile": _render(env, "Caddyfile.j2", values) if (src / "Caddyfile.j2").exists() else ""}
    out = {}
    for folder, dest in (("manifests", "manifests"), ("networkpolicies", "manifests/networkpolicies")):
        for path in sorted((src / folder).glob("*.j2")):
            text = _render(env, f"{folder}/{path.name}", values)
            if text.strip():
                out[f"{dest}/{path.name.removesuffix('.j2')}"] = text.strip() + "\n"
    return out


def check_source_links(src: Path) -> None:
    """Symlinks in appdisk/ must stay inside it."""
    top = src.resolve()
    for p in src.rglob("*"):
        if p.is_symlink() and not (p.parent.resolve() / os.readlink(p)).resolve().is_relative_to(top):
            raise BadInput(str(p.relative_to(src.parent)), f"symlink escapes {SOURCE}/ (-> {os.readlink(p)})")


def build_images(ctx: Context, dest: Path) -> tuple[list[dict], dict[str, str]]:
    """Image archives for the disk: those built here (the demo app, and caddy and the attestation
    server from pinned .debs) and the registry images pinned in the lock."""
    dest.mkdir(parents=True)
    built, refs = [], {}

    def add(name: str, ref: str, data: bytes, digest: str) -> None:
        (dest / f"{name}.tar").write_bytes(data)
        check_archive(dest / f"{name}.tar", f"image {name} (built here)")
        refs[name] = ref
        built.append({"name": name, "ref": ref, "manifest_digest": digest, "sha256": hashlib.sha256(data).hexdigest()})

    if ctx.profile.app == "demo":
        add("app", f"{DEMO_IMAGE}:1", *demo_image(ctx))
    for recipe in images.RECIPES.values():
        with log.step(f"Building the {recipe.name} image", f"Built the {recipe.name} image"):
            add(recipe.name, recipe.ref, *images.build(ctx, recipe))
    app = images.app_lock_image(ctx)
    for name in images.lock_images(ctx):
        pin = archive_pin(ctx, name)
        target = dest / f"{'app' if name == app else name}.tar"
        # checked as copied: what goes on the disk is what was hashed and read
        ctx.store.copy(pin.archive, f"images.{name}.archive", target)
        check_archive(target, f"{LOCK_FILE}: images.{name}.archive ({pin.archive.path or pin.archive.sha256[:12]})")
        ref = pin.pinned_ref if pin.digest else pin.ref  # unpinned refs are refused under --locked
        refs["app" if name == app else name] = ref
        built.append({"name": name, "ref": ref, "sha256": pin.archive.sha256})
    return built, refs


def archive_pin(ctx: Context, name: str) -> ImagePin:
    pin = ctx.lock.image(name, ctx.locked)
    if pin.archive is None or not pin.archive.sha256:
        raise BadInput(LOCK_FILE, f"images.{name}.archive: no archive of {pin.ref} is pinned",
                       "run `mithril-build lock` where the registry is reachable")
    return pin


def upstreams(ctx: Context, k3s: bool) -> dict[str, str]:
    """Where Caddy sends /attestation and everything else: k3s services, or the guest's loopback."""
    cfg = ctx.config.appdisk
    if k3s:
        return {"app": f"app.{cfg.namespace}.svc:{cfg.app_port}",
                "attestation": f"attestation-server.{cfg.namespace}.svc:{cfg.attestation_port}"}
    return {"app": f"127.0.0.1:{cfg.app_port}", "attestation": f"127.0.0.1:{cfg.attestation_port}"}


def image_services(ctx: Context) -> list[str]:
    """The services of images the project brings: the app and, without k3s, every extra image
    (run beside it, reached through the ingress at /<name>/)."""
    extras = [] if ctx.profile.os.k3s else list(ctx.config.appdisk.extra_images)
    for name in extras:
        if name in (*COMPONENTS, "gpu") or not re.fullmatch(r"[a-z0-9][a-z0-9-]{0,40}", name):
            raise BadInput("mithril.yaml", f"appdisk.extra_images: {name!r} cannot name a service",
                           "use a lower-case name (a-z, 0-9, -) other than app, caddy, attestation-server")
    return ["app", *extras]


def unpack_services(ctx: Context, tree: Path) -> tuple[dict[str, str], dict[str, int]]:
    """Unpack every image into rootfs/<name> (their archives leave the disk) and return, per
    service, the systemd-run arguments run.d/main starts it with, and the ports of the extra
    images. Image services get gosu (pipeline/sandbox.py) at sandbox.GOSU in their root."""
    configs = {}
    names = [*COMPONENTS, *image_services(ctx)[1:]]
    for name in names:
        archive = tree / "images" / f"{name}.tar"
        configs[name] = unpack(archive, tree / "rootfs" / name, f"images/{name}.tar").config
        archive.unlink()
    if not any((tree / "images").iterdir()):
        (tree / "images").rmdir()
    gosu = deb_member(ctx.store.path(GOSU_FILE), "./usr/sbin/gosu")
    for name in image_services(ctx):
        target = tree / "rootfs" / name / sandbox.GOSU.lstrip("/")
        target.parent.mkdir(mode=0o755, exist_ok=True)
        target.write_bytes(gosu)
        os.chmod(target, 0o755)
    services = service_args(ctx, configs, lambda name, spec: sandbox.identity(tree / "rootfs" / name, spec,
                                                                              f"images/{name}.tar"))
    return services, extra_ports(ctx, configs)


def extra_ports(ctx: Context, configs: dict) -> dict[str, int]:
    """{extra image: the one port it exposes} (the ingress routes /<name>/ there)."""
    cfg = ctx.config.appdisk
    taken = {cfg.app_port: "app", cfg.attestation_port: "attestation-server", cfg.ingress_port: "caddy"}
    ports = {}
    for name in image_services(ctx)[1:]:
        exposed = configs[name].exposed_ports
        if len(exposed) != 1:
            raise BadInput(f"{LOCK_FILE}: images.{name}", f"exposes {len(exposed) or 'no'} ports",
                           "an extra image must EXPOSE exactly the one port it serves on")
        if exposed[0] in taken:
            raise BadInput(f"{LOCK_FILE}: images.{name}", f"port {exposed[0]} is {taken[exposed[0]]}'s",
                           "serve the extra image on another port")
        taken[exposed[0]] = ports[name] = exposed[0]
    return ports


def service_args(ctx: Context, configs: dict, identity_of) -> dict[str, str]:
    """Per service, the systemd-run arguments run.d/main starts it with (pipeline/sandbox.py,
    docs/sandbox.md). identity_of(name, User) resolves a User as runc does."""
    cfg = ctx.config.appdisk
    caddy = identity_of("caddy", configs["caddy"].user)
    ours = {
        # root with CAP_CHOWN only (it hands server.key to Caddy's uid); the only service with the TPM
        # and the only one that sees the CA key.
        "attestation-server": (
            [f"BindPaths={TLS_DIR} {ATTESTATION_STATE}", "DevicePolicy=closed", "DeviceAllow=/dev/tpmrm0 rw",
             "CapabilityBoundingSet=CAP_CHOWN", "ProcSubset=pid"],
            ["--listen", f"127.0.0.1:{cfg.attestation_port}", "--platform", ctx.profile.platform, "--tpm",
             "/dev/tpmrm0", "--tls-dir", TLS_DIR, "--state-dir", ATTESTATION_STATE, "--tls-owner",
             f"{caddy.uid}:{caddy.gid}"], []),
        # the guest's nobody: it binds the ingress port with CAP_NET_BIND_SERVICE, its one capability;
        # it alone reads the TLS leaf key. Caddy keeps its state in /tmp.
        "caddy": ([f"User={caddy.uid}", f"Group={caddy.gid}", "DevicePolicy=closed",
                   "AmbientCapabilities=CAP_NET_BIND_SERVICE", "CapabilityBoundingSet=CAP_NET_BIND_SERVICE",
                   f"BindReadOnlyPaths={TLS_DIR}", "ProcSubset=pid"],
                  ["run", "--config", "/etc/caddy/Caddyfile", "--adapter", "caddyfile"],
                  ["HOME=/tmp", "XDG_CONFIG_HOME=/tmp/caddy", "XDG_DATA_HOME=/tmp/caddy"]),
    }
    services = {}
    for name, (props, args, env) in ours.items():
        config = configs[name]
        config = dataclasses.replace(config, env=(*config.env, *env))
        services[name] = sandbox.service_argv(name, f"{STATE}/rootfs/{name}", config,
                                              identity_of(name, config.user), props, args,
                                              f"images/{name}.tar", image=False)
    default = cfg.app_user or sandbox.DEFAULT_USER
    for name in image_services(ctx):
        where = f"images/{name}.tar"
        who = identity_of(name, sandbox.user_spec(configs[name], default))
        sandbox.warn(sandbox.issues(configs[name], where, cfg.app_port if name == "app" else None))
        # no ProcSubset=pid here: runtimes read /proc/meminfo, /proc/cpuinfo (docs/sandbox.md)
        services[name] = sandbox.service_argv(name, f"{STATE}/rootfs/{name}", configs[name], who,
                                              ["DevicePolicy=closed"], [], where)
    return services


def demo_image(ctx: Context) -> tuple[bytes, str]:
    """A static web server image from Debian's busybox-static .deb (pinned in the lock)."""
    deb = ctx.store.path("busybox-static")
    busybox = deb_member(deb, "./bin/busybox")
    www = (ctx.root / SOURCE / "www")
    rootfs = [Entry("bin", 0o755), Entry("bin/busybox", 0o755, busybox), Entry("bin/sh", 0o777, target="busybox"),
              *images.accounts(), Entry("www", 0o755)]
    for p in sorted(www.rglob("*")) if www.is_dir() else []:
        rel = "www/" + p.relative_to(www).as_posix()
        rootfs.append(Entry(rel, 0o755) if p.is_dir() else Entry(rel, 0o644, p.read_bytes()))
    port = ctx.config.appdisk.app_port
    return image_archive(DEMO_IMAGE, "1", rootfs, mtime=ctx.source_date_epoch, exposed_ports=[port],
                         user="65534:65534", entrypoint=["/bin/busybox", "httpd", "-f", "-p", str(port), "-h", "/www"])


def normalise(tree: Path) -> None:
    """Fixed permissions: 0755 for folders and executables, 0644 for everything else (unpacked
    image roots keep the modes their layers give)."""
    for p in [tree, *tree.rglob("*")]:
        if p.is_symlink() or p.relative_to(tree).parts[:1] == ("rootfs",) and p != tree / "rootfs":
            continue
        executable = p.is_dir() or os.stat(p).st_mode & stat.S_IXUSR
        os.chmod(p, 0o755 if executable else 0o644)


def file_manifest(tree: Path) -> list[dict]:
    """Per-file manifest of the disk content: path, mode, size, sha256 (symlinks: target)."""
    out = []
    for p in sorted(tree.rglob("*")):
        rel = p.relative_to(tree).as_posix()
        st = os.lstat(p)
        if stat.S_ISLNK(st.st_mode):
            out.append({"path": rel, "mode": "0777", "size": 0, "target": os.readlink(p)})
        elif stat.S_ISREG(st.st_mode):
            out.append({"path": rel, "mode": f"{st.st_mode & 0o7777:04o}", "size": st.st_size, "sha256": sha256_file(p)})
    return out


def assemble(ctx: Context, work: Path, vimages: verity_build.VerityImages, disk: Path) -> dict:
    """The GPT disk from appdisk/repart.d, checked; its layout for the record."""
    data_uuid, hash_uuid = vimages.uuids
    values = {"data_uuid": data_uuid, "hash_uuid": hash_uuid, "data_image": vimages.data, "hash_image": vimages.hash,
              "data_size": vimages.data.stat().st_size,
              "hash_size": -(-vimages.hash.stat().st_size // verity_build.BLOCK) * verity_build.BLOCK}
    verity_build.assemble(disk, ctx.root / SOURCE, values, work / "repart.d", ctx.seed,
                         {"SOURCE_DATE_EPOCH": str(ctx.source_date_epoch), "SYSTEMD_LOG_LEVEL": "warning"},
                         ["--json=off"])
    table = verity_build.check(disk, vimages, LABELS, SOURCE)
    parts = [{"label": p.label, "uuid": str(p.uuid), "type": str(p.type_uuid), "offset": p.offset, "size": p.size}
             for p in table.partitions]
    return {"uuid": str(table.disk_uuid), "size": disk.stat().st_size, "partitions": parts}
