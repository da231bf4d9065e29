"""The OS image: Mithril OS built with mkosi from the templates in `mkosi/`, byte-for-byte reproducibly.

mkosi 24.3 builds a directory tree, kernel and initrd (all reproducible). This stage makes the
rest: the squashfs root and its dm-verity tree (`verity_build.py`), the UKI (ukify with the image's
own systemd-stub, `roothash=` on the command line) and the GPT disk (`verity_build.py`, plus an ESP
holding only the UKI).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import stat
import tempfile
import uuid
from pathlib import Path

from .. import log, platforms, templates, verity_build
from ..errors import BadInput, ToolFailed, VerificationFailed
from ..files import sha256_file
from ..graph import Context, Stage, StageResult, tool_version
from ..lock import LOCK_FILE, DebPin
from ..measure import gpt, pe
from ..run import SYSTEM_PATH, run

SOURCE = "mkosi"
DISK, UKI, PACKAGES, RECORD = "os_disk.raw", "uki.efi", "packages.json", "os.json"
LABELS = ("root", "root-verity")  # data and hash partitions (mkosi/repart.d)
UKIFY = "/usr/lib/systemd/ukify"
STUB = "usr/lib/systemd/boot/efi/linuxx64.efi.stub"
OS_DEBS = "os"  # mithril.lock `debs.os`: every .deb mkosi may install (image and initrd)
GPU_DEBS = "os-nvidia"  # the same for GPU images, whose kernel is held apart (pipeline/gpu.py KERNEL_VERSION)
SOURCES = "mkosi.pkgmngr/etc/apt/sources.list.d/mkosi.sources.j2"  # the online archive; pinned builds use a local one
K3S_PINS = ("k3s", "k3s-airgap-images")
MIB = 1 << 20


# ---------------------------------------------------------------- templates

def template_vars(ctx: Context) -> dict:
    import ipaddress

    from .. import gpu

    osc = ctx.profile.os
    app = ctx.config.appdisk
    return {
        "os": osc.model_dump(mode="json"),
        "mode": ctx.profile.mode,
        **platforms.get(ctx.profile.platform).template_vars(),  # the firewall's platform rules
        "sde": ctx.source_date_epoch,
        "k3s": osc.k3s,
        "ingress_port": app.ingress_port,
        "app_port": app.app_port,
        "attestation_port": app.attestation_port,
        "cluster_cidr": osc.cluster_cidr,
        "service_cidr": osc.service_cidr,
        "cluster_dns": str(ipaddress.IPv4Network(osc.service_cidr)[10]),  # k3s's convention: .10
        "components": list(components(osc)),
        # every driver package at the one driver version (apt would take newer user space)
        "nvidia_packages": [f"{p}={gpu.DRIVER_VERSION}" for p in gpu.DRIVER_PACKAGES],
        # a GPU image's kernel, held at the version the open module builds against
        "kernel_packages": [f"{p}={gpu.KERNEL_VERSION}" for p in (osc.kernel_package, *gpu.KERNEL_PACKAGES)],
        "nvidia_lib_dir": gpu.LIB_DIR,
        "nvidia_libs": list(gpu.LIBS),
        "mirror": ctx.lock.debian.get("mirror", "http://deb.debian.org/debian"),
        "security": ctx.lock.debian.get("security", "http://security.debian.org/debian-security"),
        "airgap_name": _airgap_name(ctx) if osc.k3s else "",
    }


def components(osc) -> tuple[str, ...]:
    """The Debian components the image's packages come from (the driver is not in main)."""
    from .. import gpu

    return gpu.COMPONENTS if osc.nvidia else ("main",)


def debs_key(osc) -> str:
    """The name under `debs` in mithril.lock of the .debs this OS image is built from: GPU images
    have their own set (another kernel, the driver), so pinning one never changes the other."""
    return GPU_DEBS if osc.nvidia else OS_DEBS


def check_driver(ctx: Context, pins: dict[str, DebPin], require: bool = True) -> None:
    """A GPU image's NVIDIA packages must be one driver version and its kernel the held one (exit
    2 naming them otherwise); with `require`, the driver must be there at all."""
    from .. import gpu

    if ctx.profile.os.nvidia:
        where = f"{LOCK_FILE}: debs.{GPU_DEBS}"
        version = gpu.check_driver(pins, where)
        gpu.check_kernel(pins, where)
        if version is None and require:
            raise BadInput(LOCK_FILE, f"debs.{GPU_DEBS}: no NVIDIA driver packages, but profile {ctx.profile_name} "
                                      "has os.nvidia", "run `mithril-build lock --profile " + ctx.profile_name + "`")


def _env(folder: Path):
    return templates.environment(folder, SOURCE)


def render_tree(src: Path, variables: dict, dest: Path | None, skip: tuple[str, ...] = (),
                label: str = SOURCE) -> dict[str, str]:
    """Render every `*.j2` below src (dropping `.j2`), copy other files; return {relpath: sha256}.

    With dest=None nothing is written (used to check templates and build cache keys)."""
    digests = {}
    env = _env(src)
    for path in sorted(src.rglob("*")):
        rel = path.relative_to(src).as_posix()
        if path.is_dir() or rel.split("/")[0] in skip or rel in skip or "__pycache__" in rel:
            continue
        mode = 0o755 if os.stat(path).st_mode & stat.S_IXUSR else 0o644
        if path.suffix == ".j2":
            rel, data = rel[:-3], templates.render(env, rel, variables, f"{label}/{rel}").encode()
        else:
            data = path.read_bytes()
        digests[rel] = hashlib.sha256(data).hexdigest() + ("+x" if mode == 0o755 else "")
        if dest is not None:
            out = dest / rel
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_bytes(data)
            os.chmod(out, mode)
    if dest is not None:  # folder modes must not depend on the caller's umask (mkosi copies them)
        for d in [dest, *(p for p in dest.rglob("*") if p.is_dir() and not p.is_symlink())]:
            os.chmod(d, 0o755)
    return digests


def render_config(ctx: Context, dest: Path | None) -> dict[str, str]:
    """The mkosi configuration (without repart.d/ and k3s/, which are rendered later). A pinned
    build leaves out the online sources: mkosi then installs from the local repository only."""
    src = ctx.root / SOURCE
    if not (src / "mkosi.conf.j2").is_file():
        raise BadInput(f"{SOURCE}/mkosi.conf.j2", "not found", "the mkosi/ folder of the checkout is incomplete")
    variables = template_vars(ctx)
    skip = ("repart.d", "k3s", "nvidia", "nvidia-build", "README.md") + ((SOURCES,) if os_pins(ctx) else ())
    digests = render_tree(src, variables, dest, skip=skip)
    if ctx.profile.os.nvidia:  # the skeleton and postinst that build the NVIDIA module (config root)
        build = render_tree(src / "nvidia-build", variables, dest, label=f"{SOURCE}/nvidia-build")
        digests.update({f"nvidia-build/{k}": v for k, v in build.items()})
    for tree, wanted in (("k3s", ctx.profile.os.k3s), ("nvidia", ctx.profile.os.nvidia)):
        if wanted:  # the k3s unit, config and tmpfiles rule; the NVIDIA setup: into the extra tree
            extra = render_tree(src / tree, variables, dest / "mkosi.extra" if dest else None, label=f"{SOURCE}/{tree}")
            digests.update({f"{tree}/{k}": v for k, v in extra.items()})
    # repart definitions: syntax-checked now, rendered once the roothash is known
    env = _env(src / "repart.d")
    for path in sorted((src / "repart.d").glob("*.j2")):
        templates.check_syntax(env, path.name, f"{SOURCE}/repart.d/{path.name}")
    return digests


# ---------------------------------------------------------------- k3s pins

def _require_k3s_pins(ctx: Context) -> None:
    """Building the image needs both k3s entries pinned by sha256 (`plan` answers without)."""
    for name in K3S_PINS:
        pin = ctx.lock.files.get(name)
        if pin is None or not pin.sha256:
            state = "no such entry" if pin is None else "has no sha256"
            raise BadInput(LOCK_FILE, f"files.{name}: {state}, but profile {ctx.profile_name} has k3s",
                           f"pin files.{name} (url + sha256) with `mithril-build lock` where GitHub is reachable")


def _airgap_name(ctx: Context) -> str:
    pin = ctx.lock.files.get("k3s-airgap-images")
    base = (pin.url or pin.path or "") if pin else ""
    m = re.search(r"\.tar(\.(gz|zst|lz4))?$", base)
    return "k3s-airgap-images" + (m.group(0) if m else ".tar")


# ---------------------------------------------------------------- kernel command line

def kernel_cmdline(mode: str, roothash: str) -> str:
    """roothash= makes the initrd open /dev/mapper/root with dm-verity; /var is a tmpfs. The initrd
    is systemd's: dracut's rd.shell=/rd.emergency= would do nothing there, so production masks the
    emergency, rescue and debug shells in initrd and root instead (mkosi.finalize, initrd/)."""
    args = [f"roothash={roothash}", "root=/dev/mapper/root", "ro", "systemd.volatile=state"]
    if mode == "production":
        args += ["systemd.debug_shell=0", "panic=10", "quiet"]
    else:
        # debug: the journal on the serial console too, so `run`/`boot` logs show what services did
        args += ["console=ttyS0,115200", "systemd.show_status=yes", "systemd.journald.forward_to_console=1"]
    return " ".join(args)


def mkosi_argv(config_dir: Path, output_dir: Path, workspace: Path, package_cache: Path,
               local_mirror: Path | None = None) -> list[str]:
    mirror = ["--local-mirror", f"file://{local_mirror}"] if local_mirror else []
    return ["mkosi", "--directory", str(config_dir), "--output-dir", str(output_dir), "--workspace-dir",
            str(workspace), "--package-cache-dir", str(package_cache), *mirror, "--force", "build"]


def tool_env(ctx: Context) -> dict[str, str]:
    # Debian's python3 (with pefile) first on PATH; fixed timestamps and umask-independent tools.
    return {"PATH": SYSTEM_PATH, "SOURCE_DATE_EPOCH": str(ctx.source_date_epoch), "TZ": "UTC", "LC_ALL": "C.UTF-8"}


# ---------------------------------------------------------------- packages

def package_versions(manifest: Path) -> dict[str, str]:
    """{name: version} from mkosi's JSON manifest (arch-qualified when not amd64/all)."""
    data = json.loads(manifest.read_text())
    out = {}
    for p in data.get("packages", []):
        name = p["name"] if p.get("architecture") in (None, "amd64", "all") else f"{p['name']}:{p['architecture']}"
        out[name] = p["version"]
    return dict(sorted(out.items()))


def os_pins(ctx: Context) -> dict[str, DebPin] | None:
    """debs.os (debs.os-nvidia for a GPU image) of the lock: the only packages a pinned build can
    install. None when not pinned (an online build, --unlocked only)."""
    key = debs_key(ctx.profile.os)
    pins = ctx.lock.debs.get(key)
    if pins:
        return pins
    if ctx.locked:
        raise BadInput(LOCK_FILE, f"debs.{key}: not pinned (--locked)",
                       "build once with --unlocked, then run `mithril-build lock`")
    return None


def check_packages(pins: dict[str, DebPin], built: dict[str, str]) -> None:
    """A pinned build installs pinned versions only (apt had nothing else to choose from)."""
    diff = [f"{n} {v}" + (f" (pinned {pins[n].version})" if n in pins else " (not pinned)")
            for n, v in sorted(built.items()) if n not in pins or pins[n].version != v]
    if diff:
        raise VerificationFailed(f"the image holds packages the lock does not pin: {'; '.join(diff[:20])}")


def local_repo(ctx: Context, pins: dict[str, DebPin], dest: Path) -> Path:
    """Fetch (or take from the input store) every pinned .deb, checked against its sha256, and
    serve them to mkosi as a local repository."""
    from concurrent.futures import ThreadPoolExecutor

    from ..debian import local_repository

    with log.step(f"Fetching {len(pins)} pinned packages", "Fetched the pinned packages"):
        with ThreadPoolExecutor(4) as pool:  # a cold fetch is dominated by per-request latency
            key = debs_key(ctx.profile.os)
            futures = {n: pool.submit(ctx.store.pinned, p.file(), f"debs.{key}.{n}") for n, p in pins.items()}
        debs = {n: f.result() for n, f in sorted(futures.items())}
    return local_repository(debs, dest, ctx.profile.os.release, ctx.source_date_epoch, components(ctx.profile.os))


def record_debs(ctx: Context, package_cache: Path) -> dict[str, dict]:
    """After an online build: a pin for every .deb mkosi downloaded (image and initrd), each
    checked against the signed Debian index, and the files kept in the input store."""
    from ..debian import archive, pins_from_debs

    debs = sorted((package_cache / "cache" / "apt" / "archives").glob("*.deb"))
    with log.step(f"Recording the {len(debs)} packages the build used", "Recorded the packages"):
        index = archive(ctx.lock.debian, ctx.cache_dir / "debian", components(ctx.profile.os))
        pins = pins_from_debs(debs, index, "the online OS build")
        store = ctx.store.root / "sha256"
        store.mkdir(parents=True, exist_ok=True)
        for deb in debs:
            digest = sha256_file(deb)
            if not (store / digest).exists():
                tmp = store / f".{digest}.part"
                shutil.copyfile(deb, tmp)
                os.replace(tmp, store / digest)
    return pins


# ---------------------------------------------------------------- the stage

class OsImage(Stage):
    name = "os"
    version = 3
    deps = ()
    # no `data`: the key holds mkosi/ as rendered for this profile (render_config) and repart.d/

    def lock_entries(self, ctx: Context) -> list[str]:
        return [f"debs.{debs_key(ctx.profile.os)}"] + ([f"files.{n}" for n in K3S_PINS] if ctx.profile.os.k3s else [])

    def deb_pins(self, ctx: Context, name: str) -> dict[str, DebPin]:
        return os_pins(ctx) or {}

    def key_inputs(self, ctx: Context) -> dict:
        pins = os_pins(ctx)  # --locked refuses an unpinned debs.os first
        if pins:
            check_driver(ctx, pins, require=False)
        mkosi = tool_version("mkosi", "--version")
        pinned = ctx.lock.tools.get("mkosi")
        if pinned and mkosi.split()[-1] != pinned:
            msg = f"tools.mkosi: pinned {pinned}, but this machine has {mkosi!r}"
            if ctx.locked:
                raise BadInput(LOCK_FILE, msg, "install the pinned mkosi (scripts/setup.sh) or re-pin it")
            log.warn(f"{LOCK_FILE}: {msg}")
        return {
            "rendered": render_config(ctx, None),  # templates x config values, exactly as mkosi sees them
            "repart": ctx.checkout_digests(f"{SOURCE}/repart.d"),
            "config": {"os": ctx.profile.os.model_dump(mode="json"), "mode": ctx.profile.mode,
                       "platform": ctx.profile.platform, "seed": str(ctx.seed),
                       "source_date_epoch": ctx.source_date_epoch},
            "debian": ctx.lock.debian,
            "tools": {t: tool_version(*argv) for t, argv in {
                "mkosi": ("mkosi", "--version"), "systemd-repart": ("systemd-repart", "--version"),
                "mksquashfs": ("mksquashfs", "-version"), "ukify": (UKIFY, "--version"),
                "mkfs.vfat": ("mkfs.vfat", "--help"), "mtools": ("mcopy", "--version")}.items()},
        }

    def build(self, ctx: Context, out: Path, deps: dict[str, StageResult]) -> dict:
        if ctx.profile.os.k3s:
            _require_k3s_pins(ctx)
        scratch = ctx.cache_dir / "tmp"  # emptied when the next run takes the cache lock
        if any(c.isspace() for c in str(scratch)):
            # mkosi 24 runs `cat >{path}` through a shell and apt takes the local repository as a
            # file: URI, both unquoted: a build path with spaces needs mkosi's work elsewhere
            scratch = Path("/var/tmp")
        scratch.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="mithril-os-work-", dir=scratch) as tmp:
            return build_image(ctx, Path(tmp), out)


def build_image(ctx: Context, work: Path, out: Path) -> dict:
    env = tool_env(ctx)
    cfg, mk_out, ws = work / "config", work / "mkosi-out", work / "workspace"
    ws.mkdir(parents=True)
    render_config(ctx, cfg)
    if ctx.profile.os.k3s:
        _install_k3s(ctx, cfg)
    # Pinned: apt sees only a local repository of the pinned .debs. Online: a fresh package cache,
    # so that what it holds afterwards is exactly what this build downloaded.
    pins = os_pins(ctx)
    package_cache = work / "packages"
    package_cache.mkdir()
    if pins:
        check_driver(ctx, pins)
    mirror = local_repo(ctx, pins, work / "repo") if pins else None
    with log.step("Running mkosi (packages, kernel, initrd)", "mkosi finished"):
        run(mkosi_argv(cfg, mk_out, ws, package_cache, mirror), extra_env=env, timeout=3 * 3600)
    tree = mk_out / "image"
    for name in ("image.vmlinuz", "image.initrd", "image.manifest"):
        if not (mk_out / name).is_file():
            raise ToolFailed(f"mkosi did not produce {name} (is a kernel in os.kernel_package?)")
    kvers = sorted(p.name for p in (tree / "usr/lib/modules").iterdir())
    if len(kvers) != 1:
        raise ToolFailed(f"expected one kernel in the image, found {kvers or 'none'}")
    if not (tree / STUB).is_file():
        raise ToolFailed(f"the image has no systemd-stub at /{STUB} (package systemd-boot-efi)")

    packages = package_versions(mk_out / "image.manifest")
    if pins:
        check_packages(pins, packages)
        debs = {n: p.model_dump(mode="json") for n, p in sorted(pins.items())}
    else:
        debs = record_debs(ctx, package_cache)
        check_driver(ctx, {n: DebPin(**p) for n, p in debs.items()})
    # packages: what the image holds; debs: every .deb the build could install (`lock` pins them)
    (out / PACKAGES).write_bytes(json.dumps({"packages": packages, "debs": debs}, indent=1, sort_keys=True).encode()
                                 + b"\n")

    # Keep the stub and os-release for the UKI; the ESP content mkosi left in the tree is not root.
    stub, osrel = work / "stub.efi", work / "os-release"
    shutil.copyfile(tree / STUB, stub)
    shutil.copyfile(tree / "usr/lib/os-release", osrel)
    for d in ("efi", "boot"):
        if (tree / d).is_dir():
            for child in (tree / d).iterdir():
                shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()

    with log.step("Making the squashfs root", "Made the squashfs root"):
        squash = verity_build.squashfs(tree, work / "root.squashfs", (), env)
    with log.step("Computing dm-verity for the root", "Computed dm-verity"):
        vimages = verity_build.hash_tree(squash, work / "root.verity", ctx.seed)  # repart.d names both files
    roothash = vimages.roothash.hex()

    cmdline = kernel_cmdline(ctx.profile.mode, roothash)
    uki = out / UKI
    with log.step("Building the UKI (ukify, the image's systemd-stub)", "Built the UKI"):
        # The 252 stub expects a NUL-terminated command line.
        (work / "cmdline").write_bytes(cmdline.encode() + b"\0")
        run([UKIFY, "build", "--linux", mk_out / "image.vmlinuz", "--initrd", mk_out / "image.initrd",
             "--cmdline", f"@{work / 'cmdline'}", "--os-release", f"@{osrel}", "--stub", stub,
             "--uname", kvers[0], "--efi-arch", "x64", "--output", uki], extra_env=env)
    uki_pe = pe.PeImage(uki.read_bytes(), UKI)
    if roothash.encode() not in bytes(uki_pe.section_data(".cmdline") or b""):
        raise VerificationFailed(f"{UKI}: .cmdline does not carry roothash={roothash}")

    with log.step("Assembling the GPT disk (systemd-repart)", "Assembled the OS disk"):
        # mtools copies file and folder mtimes: make them SOURCE_DATE_EPOCH
        esp = work / "esp"
        (esp / "EFI/BOOT").mkdir(parents=True)
        shutil.copyfile(uki, esp / "EFI/BOOT/BOOTX64.EFI")
        for p in (esp / "EFI/BOOT/BOOTX64.EFI", esp / "EFI/BOOT", esp / "EFI", esp):
            os.utime(p, (ctx.source_date_epoch, ctx.source_date_epoch))
        esp_size = -(-(uki.stat().st_size * 11 // 10 + 8 * MIB) // MIB) * MIB
        root_uuid, verity_uuid = vimages.uuids
        variables = {"esp_size": esp_size, "root_uuid": str(root_uuid), "verity_uuid": str(verity_uuid)}
        disk = out / DISK
        verity_build.assemble(disk, ctx.root / SOURCE, variables, work / "repart.d", ctx.seed,
                             # mkfs.vfat stamps the volume label entry with the wall clock unless --invariant
                             {**env, "SYSTEMD_REPART_MKFS_OPTIONS_VFAT": "--invariant"}, [f"--root={work}"])
    table = verity_build.check(disk, vimages, LABELS, SOURCE)
    parts = partition_records(disk, table)

    params = vimages.params
    record = {
        "roothash": roothash,
        "cmdline": cmdline,
        "mode": ctx.profile.mode,
        "platform": ctx.profile.platform,
        "kernel": {"version": kvers[0], "package": ctx.profile.os.kernel_package},
        "stub": {"version": pe.stub_version(uki_pe)[1], "sha256": sha256_file(stub)},
        "uki": {"sha256": sha256_file(uki), "size": uki.stat().st_size,
                "sections": {s.name: uki_pe.section_sha256(s.name).hex() for s in uki_pe.sections}},
        "disk": {"sha256": sha256_file(disk), "size": disk.stat().st_size,
                 "disk_uuid": str(table.disk_uuid), "partitions": parts},
        "verity": {"data_blocks": params.data_blocks, "block_size": params.data_block_size,
                   "salt": params.salt.hex(), "uuid": str(uuid.UUID(bytes=params.uuid))},
        "packages": {"file": PACKAGES, "count": len(packages), "sha256": sha256_file(out / PACKAGES)},
    }
    (out / RECORD).write_bytes(json.dumps(record, indent=2, sort_keys=True).encode() + b"\n")
    return {"roothash": roothash, "kernel": kvers[0], "stub_version": record["stub"]["version"],
            "packages_sha256": record["packages"]["sha256"]}


def partition_records(disk: Path, table: gpt.Table) -> list[dict]:
    """The disk's partitions for the record; it must hold ESP, root and root-verity, nothing else."""
    labels = sorted(p.label for p in table.partitions)
    if labels != ["esp", *LABELS]:
        raise VerificationFailed(f"{DISK}: unexpected partitions {labels}")
    return [{"number": p.number, "label": p.label, "type": str(p.type_uuid), "uuid": str(p.uuid),
             "offset": p.offset, "size": p.size, "sha256": gpt.partition_sha256(disk, p)} for p in table.partitions]


def _install_k3s(ctx: Context, cfg: Path) -> None:
    """The pinned k3s binary and airgap images join the extra tree (fetched once, sha256-checked
    as copied; the airgap archive read as image archives before it goes on the disk)."""
    from ..oci_read import check_archive

    extra = cfg / "mkosi.extra"
    binary = extra / "usr/local/bin/k3s"
    binary.parent.mkdir(parents=True, exist_ok=True)
    ctx.store.copy(ctx.lock.file("k3s"), "files.k3s", binary)
    os.chmod(binary, 0o755)
    images = extra / "usr/lib/mithril/k3s" / _airgap_name(ctx)
    images.parent.mkdir(parents=True, exist_ok=True)
    ctx.store.copy(ctx.lock.file("k3s-airgap-images"), "files.k3s-airgap-images", images)
    check_archive(images, f"{LOCK_FILE}: files.k3s-airgap-images", many=True)
    os.chmod(images, 0o644)


__all__ = ["OsImage", "debs_key", "kernel_cmdline", "os_pins", "render_config"]
