"""Reading container image archives (docker-archive or OCI layout in a tar, as `docker save`,
`podman save` and pipeline/oci.py write them): check them, and unpack an image's layers into a
root folder for platforms that run images without a container runtime.

Everything in an archive is untrusted: every blob is checked against the digest it is named by,
every layer against the config's diff_ids, and unpacking resolves paths as inside a chroot (a
symlink to / in one layer never lets a later layer write outside the root; no whiteout, hard
link, device or FIFO reaches outside it either).

Memory: layers are read as streams, never whole. Peak memory is the interpreter and its imports
(~45 MiB) plus a few MiB of buffers (CHUNK, TAR_BUFFER, gzip's window), whatever a layer's size
or member count: measured flat from 0 to 768 MiB (bench/bench_image_memory.py, bench/RESULTS.md).
A zstd layer is inflated by the zstd program (its own process: at most its 128 MiB default
window); the outer archive's index holds at most MAX_MEMBERS headers.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import os
import posixpath
import re
import shutil
import stat
import tarfile
import tempfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from .archive import check_member_name, first_line, tar_members, validate_tar
from .errors import BadInput, ToolFailed
from .run import pipe, run

MAX_JSON = 4 << 20  # manifests and configs are a few KiB
MAX_MEMBERS = 10_000  # an image archive holds a few files per layer; k3s's airgap archive ~100
CHUNK = 1 << 20  # the most a layer is read at once (compressed or not)
# tarfile's stream buffer: it copies what is left of it on every 512-byte header read, so 1 MiB
# made many small members slow, and the default (10 KiB) large files (bench/bench_image_memory.py)
TAR_BUFFER = 64 << 10

GZIP, ZSTD = b"\x1f\x8b", b"\x28\xb5\x2f\xfd"
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
        try:
            for count, m in enumerate(tar_members(self.tf), 1):
                if count > MAX_MEMBERS:
                    raise BadInput(where, f"more than {MAX_MEMBERS} members: not an image archive")
                name = check_member_name(m.name, where)
                if m.isfile():
                    self.members[name] = m
        except tarfile.TarError as e:
            raise BadInput(where, f"not an image archive (tar): {first_line(e)}") from None

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
    tool = {GZIP: ["gzip", "-dc"], ZSTD: ["zstd", "-dcq"],
            b"\x04\x22\x4d\x18": ["lz4", "-dc"]}.get(magic[:2] if magic[:2] == GZIP else magic)
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
    """Check the archive's images and every layer of them: blobs against their digests, layers
    against the config's diff_ids, and every layer member against what _check_member refuses
    (read as a stream: memory does not grow with a layer's size)."""
    where = where or str(path)
    a = _Archive(path, where)
    try:
        images = _read(a, many)
        checked = set()
        for image in images:
            for layer, diff_id in zip(image.layers, image.diff_ids, strict=True):
                if (layer, diff_id) not in checked:
                    with contextlib.closing(_layer(a, layer, diff_id)) as members:
                        for m, _ in members:
                            _check_member(m, f"{where}: layer {_show(layer)}")
                    checked.add((layer, diff_id))
        return images
    finally:
        a.tf.close()


def _read(a: _Archive, many: bool) -> list[Image]:
    """The archive's images from its index or manifest (their layers are not read here)."""
    if "index.json" in a.members:
        return _read_oci(a, many)
    if "manifest.json" in a.members:
        return _read_docker(a, many)
    raise BadInput(a.where, "neither index.json (OCI) nor manifest.json (docker-archive) in the archive")


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


# ---------------------------------------------------------------------------- reading layers

class _Hashing:
    """A reader that hashes every byte read through it."""

    def __init__(self, f):
        self.f, self.h = f, hashlib.sha256()

    def read(self, n: int) -> bytes:
        data = self.f.read(n)
        self.h.update(data)
        return data


class _LayerTarInfo(tarfile.TarInfo):
    """tarfile's reading of headers, bounded: it would hold a pax or GNU long-name header of any
    size in memory, nest them without end, and build sparse maps of any length (layer.md: sparse
    files SHOULD NOT be used; image builders write none), all from a few bytes of gzip."""

    MAX_EXTENDED = 64 << 10  # a path is at most 4 KiB (PATH_MAX); xattrs add a few more
    EXTENDED = (tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK, tarfile.XHDTYPE, tarfile.XGLTYPE,
                tarfile.SOLARIS_XHDTYPE)

    def _proc_member(self, tf):
        if self.type in self.EXTENDED:
            tf.extended_run = getattr(tf, "extended_run", 0) + 1
            if self.size > self.MAX_EXTENDED or tf.extended_run > 8:
                raise tarfile.SubsequentHeaderError(f"extended header of {self.size} bytes, or one of more than 8 "
                                                    f"in a row, before {self.name!r}")
        else:
            tf.extended_run = 0
        return super()._proc_member(tf)

    def _proc_sparse(self, tf):
        raise tarfile.SubsequentHeaderError(f"sparse file {self.name!r} (not supported in a layer)")

    def _proc_gnusparse_00(self, *args):
        raise tarfile.SubsequentHeaderError(f"sparse file {self.name!r} (not supported in a layer)")

    _proc_gnusparse_01 = _proc_gnusparse_10 = _proc_gnusparse_00


def _show(name: str) -> str:
    """A name from the archive as it can stand in a one-line message."""
    return name if name.isprintable() else repr(name)


def _layer(a: _Archive, name: str, diff_id: str) -> Iterator[tuple[tarfile.TarInfo, tarfile.TarFile]]:
    """The members of a layer (with the TarFile to read a file member from), as they are read.
    Once the last is read the layer's uncompressed bytes, padding included, are checked against
    diff_id. Memory stays at a few CHUNKs whatever the layer's size or member count: gzip and zstd
    are inflated as a stream, and tarfile keeps no list of the headers read."""
    where = f"{a.where}: layer {_show(name)}"
    if name not in a.members:
        raise BadInput(where, "referenced but not in the archive (as a file)")
    blob = a.tf.extractfile(a.members[name])
    magic = blob.peek(4)[:4]
    kind = "gzip" if magic[:2] == GZIP else "zstd" if magic == ZSTD else "tar"
    with contextlib.ExitStack() as stack:
        try:
            if kind == "gzip":
                plain = gzip.GzipFile(fileobj=blob, mode="rb")
            elif kind == "zstd":
                plain = stack.enter_context(pipe(["zstd", "-dcq"], blob, CHUNK))
            else:
                plain = blob
            hashed = _Hashing(plain)
            with tarfile.open(fileobj=hashed, mode="r|", bufsize=TAR_BUFFER,
                              tarinfo=_LayerTarInfo) as tf:
                for m in tar_members(tf):
                    yield m, tf
            while hashed.read(CHUNK):
                pass
        except tarfile.TarError as e:
            raise BadInput(where, f"not a readable tar: {first_line(e)}") from None
        except (OSError, EOFError, zlib.error) as e:  # gzip.BadGzipFile is an OSError
            raise BadInput(where, f"unreadable {kind} data: {first_line(e)}") from None
        except ToolFailed as e:
            raise BadInput(where, f"unreadable zstd data: {str(e).splitlines()[-1][:200]}") from None
    if "sha256:" + hashed.h.hexdigest() != diff_id:
        raise BadInput(where, f"content does not match its diff_id {diff_id[:19]}…")


def _check_member(m: tarfile.TarInfo, where: str) -> str | None:
    """What can be refused in a layer member without looking at the tree it applies to: absolute
    or `..` names and hard link targets, whiteouts of nothing, of `.` or `..`, or below a whiteout.
    Returns the normalised name (None for the root itself)."""
    name = check_member_name(m.name, where)
    if name == ".":
        return None
    *folders, base = name.split("/")
    if any(f.startswith(WHITEOUT) for f in folders):
        raise BadInput(where, f"member {m.name!r} lies below a whiteout (a whiteout is never a folder)")
    if base.startswith(WHITEOUT) and base[len(WHITEOUT):] in ("", ".", ".."):
        raise BadInput(where, f"member {m.name!r} is a whiteout of {base[len(WHITEOUT):] or 'nothing'!r}")
    if m.islnk():
        target = posixpath.normpath(m.linkname)
        if m.linkname.startswith("/") or "/../" in f"/{m.linkname}/" or target == ".":
            raise BadInput(where, f"member {m.name!r} is a hard link to {m.linkname!r}, not a file of this image")
    return name


# ---------------------------------------------------------------------------- unpacking

def unpack(path: Path, dest: Path, where: str | None = None) -> Image:
    """Apply the image's layers in order into dest (which must not exist), as a container runtime
    does: whiteouts and opaque folders honoured, every path resolved inside dest as if dest were
    / (a symlink, absolute or with `..`, never leads out), hard links only to what the image holds;
    device files and FIFOs skipped, ownership dropped (the app disk is all root). Each layer is
    read twice, as a stream: its whiteouts first (they hide only what lower layers made, wherever
    they stand in the layer: OCI image-spec, layer.md "Whiteouts"), then everything else. Refuses
    (BadInput naming the layer and the member) what no runtime could apply inside the root, and
    then leaves no dest behind."""
    where = where or str(path)
    a = _Archive(path, where)
    try:
        image = _read(a, many=False)[0]
        dest.mkdir(parents=True)
        try:
            os.chmod(dest, 0o755)
            for layer, diff_id in zip(image.layers, image.diff_ids, strict=True):
                lwhere = f"{where}: layer {_show(layer)}"
                for whiteouts in (True, False):
                    with contextlib.closing(_layer(a, layer, diff_id)) as members:  # a zstd child ends here
                        for m, tf in members:
                            name = _check_member(m, lwhere)
                            if name is not None and posixpath.basename(name).startswith(WHITEOUT) == whiteouts:
                                _apply(dest, name, m, tf, lwhere)
            for d in ("proc", "sys", "dev", "tmp", "run"):  # mount points a service manager needs
                folder = _folder(dest, d, f"{where}: /{d}")
                if d == "tmp":
                    os.chmod(folder, 0o1777)
        except BaseException:
            shutil.rmtree(dest, ignore_errors=True)
            raise
    finally:
        a.tf.close()
    return image


def _inside(root: Path, rel: str, where: str, follow_last: bool) -> Path:
    """root/rel with every symlink on the way resolved as if root were / (a chroot, or
    securejoin): `..` stops at root, absolute targets restart there. The result holds no symlink
    but, without follow_last, its last component."""
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
        if (parts or follow_last) and candidate.is_symlink():
            hops += 1
            if hops > 40:  # Linux's limit (ELOOP)
                raise BadInput(where, "too many levels of symbolic links")
            target = os.readlink(candidate)
            if target.startswith("/"):
                current = []
            parts = [p for p in target.split("/") if p not in ("", ".")] + parts
            continue
        current.append(part)
    return root.joinpath(*current)


def in_root(root: Path, rel: str) -> Path:
    """A path of an unpacked image as a process chrooted there sees it: its symlinks resolved
    inside root (read through this, never through root / rel, which follows them on the host)."""
    return _inside(root, rel, f"image {root.name}: /{rel}", follow_last=True)


def _folder(root: Path, rel: str, where: str) -> Path:
    """root/rel resolved inside root, created (0755, with its parents) where missing."""
    folder = _inside(root, rel, where, follow_last=True)
    missing, existing = [], folder
    while not os.path.lexists(existing):
        missing.append(existing)
        existing = existing.parent
    if not existing.is_dir():  # no symlink on the way: _inside resolved them all
        raise BadInput(where, f"/{existing.relative_to(root).as_posix()} is not a folder in the image")
    for d in reversed(missing):
        d.mkdir()
        os.chmod(d, 0o755)
    return folder


def _remove(path: Path) -> None:
    """Remove what is at path (never following a symlink there)."""
    try:
        st = os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return
    if stat.S_ISDIR(st.st_mode):
        shutil.rmtree(path)
    else:
        path.unlink()


def _apply(root: Path, name: str, m: tarfile.TarInfo, tf: tarfile.TarFile, where: str) -> None:
    """Apply one member of a layer (name already checked by _check_member) inside root."""
    member = f"member {m.name!r}"
    parent, base = posixpath.split(name)
    try:
        if base == OPAQUE:  # hides every lower child of its folder (and creates nothing)
            folder = _inside(root, parent, f"{where}: {member}", follow_last=True)
            if folder.is_dir() and not folder.is_symlink():
                for child in list(folder.iterdir()):
                    _remove(child)
            return
        if base.startswith(WHITEOUT + WHITEOUT):  # other aufs metadata (.wh..wh.plnk): no file
            return
        if base.startswith(WHITEOUT):
            _remove(_inside(root, parent, f"{where}: {member}", follow_last=True) / base[len(WHITEOUT):])
            return
        target = _folder(root, parent, f"{where}: {member}") / base
        mode = m.mode & 0o7777 & ~(stat.S_ISUID | stat.S_ISGID)  # nothing setuid on the app disk
        if m.isdir():
            if not (os.path.lexists(target) and stat.S_ISDIR(os.lstat(target).st_mode)):
                _remove(target)
                target.mkdir()
            os.chmod(target, mode | 0o700)
        elif m.issym():
            _remove(target)
            os.symlink(m.linkname, target)
        elif m.islnk():  # to what the image holds at that path (its last component not followed)
            source = _inside(root, posixpath.normpath(m.linkname), f"{where}: {member}", follow_last=False)
            st = os.lstat(source) if os.path.lexists(source) else None
            if st is None or not (stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode)) or source == target:
                raise BadInput(where, f"{member} is a hard link to {m.linkname!r}, which is not a file of this image")
            _remove(target)
            os.link(source, target, follow_symlinks=False)
        elif m.isfile():
            _remove(target)
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            with tf.extractfile(m) as src, open(fd, "wb") as dst:
                shutil.copyfileobj(src, dst, CHUNK)
            os.chmod(target, mode)
        else:  # device files and FIFOs are skipped (/dev comes from the service manager)
            _remove(target)
    except OSError as e:
        raise BadInput(where, f"{member} cannot be applied: {e.strerror or e}") from None
