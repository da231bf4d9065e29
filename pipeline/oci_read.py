"""Reading container image archives (docker-archive or OCI layout in a tar, as `docker save`,
`podman save` and pipeline/oci.py write them): check them, and unpack an image's layers into a
root folder for platforms that run images without a container runtime.

Everything in an archive is untrusted: every blob is checked against the digest it is named by,
every layer against the config's diff_ids, and unpacking resolves paths as inside a chroot (a
symlink to / in one layer never lets a later layer write outside the root).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import posixpath
import re
import shutil
import stat
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .archive import check_member_name, first_line, validate_tar
from .errors import BadInput, ToolFailed
from .run import run

MAX_JSON = 4 << 20  # manifests and configs are a few KiB
WHITEOUT, OPAQUE = ".wh.", ".wh..wh..opq"


@dataclass(frozen=True)
class ImageConfig:
    entrypoint: tuple[str, ...]
    cmd: tuple[str, ...]
    env: tuple[str, ...]  # NAME=value
    user: str  # "" when the image names none
    workdir: str
    exposed_ports: tuple[int, ...]
    volumes: tuple[str, ...] = ()
    healthcheck: bool = False  # a HEALTHCHECK other than NONE
    stop_signal: str = ""

    @property
    def argv(self) -> tuple[str, ...]:
        return self.entrypoint + self.cmd


@dataclass(frozen=True)
class Image:
    ref: str | None  # the name:tag the archive carries, if any
    config: ImageConfig
    layers: tuple[str, ...]  # archive member names, in order (lowest first)
    diff_ids: tuple[str, ...]


class _Archive:
    def __init__(self, path: Path, where: str):
        self.where = where
        try:
            self.tf = tarfile.open(path, "r:")
        except (tarfile.TarError, OSError) as e:
            raise BadInput(where, f"not an image archive (tar): {first_line(e)}") from None
        self.members = {}
        for m in self.tf.getmembers():
            name = check_member_name(m.name, where)
            if m.isfile():
                self.members[name] = m

    def read(self, name: str, limit: int | None = None) -> bytes:
        m = self.members.get(posixpath.normpath(name))
        if m is None:
            raise BadInput(self.where, f"{name}: referenced but not in the archive")
        if limit is not None and m.size > limit:
            raise BadInput(self.where, f"{name}: {m.size} bytes, more than a manifest or config can be")
        return self.tf.extractfile(m).read()

    def json(self, name: str):
        return self.parse(self.read(name, MAX_JSON), name)

    def parse(self, data: bytes, name: str):
        try:
            return json.loads(data)
        except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
            raise BadInput(self.where, f"{name}: not valid JSON") from None

    def blob(self, digest: str, what: str) -> str:
        if not isinstance(digest, str) or not digest.startswith("sha256:") or len(digest) != 71:
            raise BadInput(self.where, f"{what}: digest {digest!r} is not sha256:<64 hex>")
        name = "blobs/sha256/" + digest[7:]
        if name not in self.members:
            raise BadInput(self.where, f"{what}: blob {digest[:19]}… is not in the archive")
        return name

    def sha256(self, name: str) -> str:
        h = hashlib.sha256()
        f = self.tf.extractfile(self.members[name])
        while chunk := f.read(1 << 20):
            h.update(chunk)
        return h.hexdigest()


def _config(doc, where: str) -> tuple[ImageConfig, tuple[str, ...]]:
    if not isinstance(doc, dict):
        raise BadInput(where, "image config: not a JSON object")
    c = doc.get("config") or {}
    if not isinstance(c, dict):
        raise BadInput(where, "image config: config is not an object")

    def strings(key) -> tuple[str, ...]:
        value = c.get(key) or []
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise BadInput(where, f"image config: config.{key} is not a list of strings")
        return tuple(value)

    ports = []
    for p in (c.get("ExposedPorts") or {}):
        number = str(p).split("/")[0]
        if number.isdigit():
            ports.append(int(number))
    rootfs = doc.get("rootfs") or {}
    diff_ids = rootfs.get("diff_ids") if isinstance(rootfs, dict) else None
    if not isinstance(diff_ids, list) or not all(isinstance(d, str) for d in diff_ids):
        raise BadInput(where, "image config: rootfs.diff_ids missing")
    user, workdir, stop = c.get("User") or "", c.get("WorkingDir") or "/", c.get("StopSignal") or ""
    if not all(isinstance(v, str) for v in (user, workdir, stop)):
        raise BadInput(where, "image config: User/WorkingDir/StopSignal are not strings")
    if not workdir.startswith("/"):
        raise BadInput(where, f"image config: WorkingDir {workdir!r} is not an absolute path")
    if stop and not re.fullmatch(r"(SIG)?[A-Z0-9+-]{2,12}|[0-9]{1,2}", stop):
        raise BadInput(where, f"image config: StopSignal {stop!r} is not a signal")
    volumes = c.get("Volumes") or {}
    if not isinstance(volumes, dict) or not all(isinstance(v, str) and re.fullmatch(r"/[\w./@+-]*", v)
                                                for v in volumes):
        raise BadInput(where, "image config: Volumes is not an object of absolute paths (letters, digits, ./_-@+)")
    health = c.get("Healthcheck") or {}
    test = health.get("Test") if isinstance(health, dict) else None
    healthcheck = isinstance(test, list) and bool(test) and test[0] != "NONE"
    return ImageConfig(strings("Entrypoint"), strings("Cmd"), strings("Env"), user, workdir,
                       tuple(sorted(ports)), tuple(sorted(volumes)), healthcheck,
                       stop if not stop or stop.isdigit() or stop.startswith("SIG") else "SIG" + stop), tuple(diff_ids)


def check_archive(path: Path, where: str | None = None, many: bool = False) -> list[Image]:
    """What every image archive passes before it goes on a disk: no hostile tar members, and whole,
    consistent images (one, or with `many` one or more, as in k3s's airgap archive). A gzip, zstd
    or lz4 compressed archive is checked decompressed, in a temporary file beside it."""
    where = where or str(path)
    with open(path, "rb") as f:
        magic = f.read(4)
    tool = {b"\x1f\x8b": ["gzip", "-dc"], b"\x28\xb5\x2f\xfd": ["zstd", "-dcq"],
            b"\x04\x22\x4d\x18": ["lz4", "-dc"]}.get(magic[:2] if magic[:2] == b"\x1f\x8b" else magic)
    if tool is None:
        validate_tar(path, where)
        return read_images(path, where, many)
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".check-") as tmp:
        plain = Path(tmp) / "plain.tar"
        with open(plain, "wb") as out:
            try:
                run([*tool, path], stdout=out)
            except ToolFailed as e:
                raise BadInput(where, f"does not decompress: {str(e).splitlines()[-1][:200]}") from None
        validate_tar(plain, where)
        return read_images(plain, where, many)


def read_image(path: Path, where: str | None = None) -> Image:
    """Check an image archive (one image) and return its config and layer members. Blob names are
    checked against their digests and every layer against the config's diff_ids."""
    return read_images(path, where)[0]


def read_images(path: Path, where: str | None = None, many: bool = False) -> list[Image]:
    where = where or str(path)
    a = _Archive(path, where)
    try:
        if "index.json" in a.members:
            images = _read_oci(a, many)
        elif "manifest.json" in a.members:
            images = _read_docker(a, many)
        else:
            raise BadInput(where, "neither index.json (OCI) nor manifest.json (docker-archive) in the archive")
        checked = set()
        for image in images:
            for layer, diff_id in zip(image.layers, image.diff_ids, strict=True):
                if (layer, diff_id) not in checked:
                    if "sha256:" + hashlib.sha256(_layer_bytes(a, layer)).hexdigest() != diff_id:
                        raise BadInput(where, f"layer {layer}: content does not match its diff_id {diff_id[:19]}…")
                    checked.add((layer, diff_id))
        return images
    finally:
        a.tf.close()


def _entries(doc, key: str | None, what: str, many: bool, where: str) -> list[dict]:
    entries = doc.get(key) if key and isinstance(doc, dict) else (doc if key is None else None)
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries) or not entries \
            or (len(entries) != 1 and not many):
        raise BadInput(where, f"{what}: expected {'one or more images' if many else 'exactly one image manifest'}")
    return entries


def _read_oci(a: _Archive, many: bool) -> list[Image]:
    return [_read_oci_manifest(a, desc)
            for desc in _entries(a.json("index.json"), "manifests", "index.json", many, a.where)]


def _read_oci_manifest(a: _Archive, desc: dict) -> Image:
    annotations = desc.get("annotations")
    ref = annotations.get("io.containerd.image.name") if isinstance(annotations, dict) else None
    name = a.blob(desc.get("digest"), "index.json manifest")
    if a.sha256(name) != name.rsplit("/", 1)[1]:
        raise BadInput(a.where, f"{name}: content does not match its digest")
    manifest = a.json(name)
    if not isinstance(manifest, dict) or not isinstance(manifest.get("layers"), list):
        raise BadInput(a.where, f"{name}: not an image manifest (no layers)")
    config = manifest.get("config")
    cfg_name = a.blob(config.get("digest") if isinstance(config, dict) else None, "manifest config")
    layers = []
    for i, layer in enumerate(manifest["layers"]):
        lname = a.blob(layer.get("digest") if isinstance(layer, dict) else None, f"manifest layers[{i}]")
        if a.sha256(lname) != lname.rsplit("/", 1)[1]:
            raise BadInput(a.where, f"{lname}: content does not match its digest")
        layers.append(lname)
    if a.sha256(cfg_name) != cfg_name.rsplit("/", 1)[1]:
        raise BadInput(a.where, f"{cfg_name}: content does not match its digest")
    config, diff_ids = _config(a.json(cfg_name), a.where)
    if len(diff_ids) != len(layers):
        raise BadInput(a.where, f"{len(layers)} layers but {len(diff_ids)} diff_ids")
    return Image(ref if isinstance(ref, str) else None, config, tuple(layers), diff_ids)


def _read_docker(a: _Archive, many: bool) -> list[Image]:
    return [_read_docker_entry(a, entry)
            for entry in _entries(a.json("manifest.json"), None, "manifest.json", many, a.where)]


def _read_docker_entry(a: _Archive, entry: dict) -> Image:
    cfg_name, layers = entry.get("Config"), entry.get("Layers")
    if not isinstance(cfg_name, str) or not isinstance(layers, list) or not all(isinstance(x, str) for x in layers):
        raise BadInput(a.where, "manifest.json: Config and Layers missing")
    cfg_bytes = a.read(cfg_name, MAX_JSON)
    stem = posixpath.basename(cfg_name).removesuffix(".json")
    if len(stem) == 64 and hashlib.sha256(cfg_bytes).hexdigest() != stem:
        raise BadInput(a.where, f"{cfg_name}: content does not match its name")
    config, diff_ids = _config(a.parse(cfg_bytes, cfg_name), a.where)
    if len(diff_ids) != len(layers):
        raise BadInput(a.where, f"{len(layers)} layers but {len(diff_ids)} diff_ids")
    tags = entry.get("RepoTags") or []
    return Image(tags[0] if isinstance(tags, list) and tags and isinstance(tags[0], str) else None, config,
                 tuple(posixpath.normpath(x) for x in layers), diff_ids)


def _layer_bytes(a: _Archive, name: str) -> bytes:
    """The uncompressed layer tar (gzip and zstd layers are decompressed)."""
    data = a.read(name)
    if data[:2] == b"\x1f\x8b":
        try:
            return gzip.decompress(data)
        except (OSError, EOFError) as e:
            raise BadInput(a.where, f"layer {name}: bad gzip data: {e}") from None
    if data[:4] == b"\x28\xb5\x2f\xfd":
        return run(["zstd", "-dc"], input=data).stdout
    return data


# ---------------------------------------------------------------------------- unpacking

def unpack(path: Path, dest: Path, where: str | None = None) -> Image:
    """Apply the image's layers in order into dest (which must not exist): whiteouts and opaque
    folders honoured, device files skipped, ownership dropped (the app disk is all root)."""
    where = where or str(path)
    image = read_image(path, where)
    dest.mkdir(parents=True)
    os.chmod(dest, 0o755)
    a = _Archive(path, where)
    try:
        for layer in image.layers:
            with tarfile.open(fileobj=io.BytesIO(_layer_bytes(a, layer)), mode="r:") as tf:
                _apply_layer(tf, dest, f"{where}: {layer}")
    finally:
        a.tf.close()
    for d in ("proc", "sys", "dev", "tmp", "run"):  # mount points a service manager needs
        (dest / d).mkdir(exist_ok=True)
    os.chmod(dest / "tmp", 0o1777)
    return image


def _inside(root: Path, rel: str, where: str, follow_last: bool = False) -> Path:
    """root/rel with symlinks among the parents resolved as if root were / (chroot semantics)."""
    parts = [p for p in rel.split("/") if p not in ("", ".")]
    current: list[str] = []
    hops = 0
    while parts:
        part = parts.pop(0)
        if part == "..":
            if current:
                current.pop()
            continue
        candidate = root.joinpath(*current, part)
        if candidate.is_symlink() and (parts or follow_last):
            hops += 1
            if hops > 40:
                raise BadInput(where, f"{rel}: too many levels of symbolic links")
            target = os.readlink(candidate)
            if target.startswith("/"):
                current = []
            parts = [p for p in target.split("/") if p not in ("", ".")] + parts
            continue
        current.append(part)
    return root.joinpath(*current)


def _mkdirs(root: Path, folder: Path) -> None:
    """Create folder and missing parents with mode 0755 (not the caller's umask)."""
    missing = []
    while not folder.exists() and folder != root:
        missing.append(folder)
        folder = folder.parent
    for d in reversed(missing):
        d.mkdir()
        os.chmod(d, 0o755)


def _remove(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)


def _apply_layer(tf: tarfile.TarFile, root: Path, where: str) -> None:
    for m in tf:
        name = check_member_name(m.name, where)
        if name in (".", ""):
            continue
        parent, base = posixpath.split(name)
        target_dir = _inside(root, parent, where, follow_last=True)
        if not target_dir.is_relative_to(root):
            raise BadInput(where, f"{m.name}: escapes the image root")
        if base == OPAQUE:
            for child in list(target_dir.iterdir()) if target_dir.is_dir() else []:
                _remove(child)
            continue
        if base.startswith(WHITEOUT):
            _remove(target_dir / base[len(WHITEOUT):])
            continue
        _mkdirs(root, target_dir)
        target = target_dir / base
        mode = m.mode & 0o7777 & ~(stat.S_ISUID | stat.S_ISGID)  # nothing setuid on the app disk
        if m.isdir():
            if target.exists() and not target.is_dir() or target.is_symlink():
                _remove(target)
            target.mkdir(exist_ok=True)
            os.chmod(target, mode | 0o700)
        elif m.issym():
            _remove(target)
            os.symlink(m.linkname, target)
        elif m.islnk():
            source = _inside(root, check_member_name(m.linkname, where), where)
            if not source.is_relative_to(root) or not source.is_file():
                raise BadInput(where, f"{m.name}: hard link to {m.linkname!r}, which is not a file of this image")
            _remove(target)
            os.link(source, target)
        elif m.isfile():
            _remove(target)
            with tf.extractfile(m) as src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst)
            os.chmod(target, mode)
        # device files and FIFOs are skipped: /dev comes from the service manager
