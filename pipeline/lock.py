"""mithril.lock: every external input pinned by digest, and the content-addressed input store."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import tempfile
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, NonNegativeInt, StrictInt, ValidationError, field_validator

from . import log
from .errors import BadInput, ToolFailed

LOCK_FILE = "mithril.lock"
VERSION = 1
HEX64 = r"^[0-9a-f]{64}$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FilePin(_Strict):
    """A file fetched by URL (or read from a path in the checkout) and pinned by sha256."""

    url: str | None = None
    path: str | None = None
    sha256: str | None = Field(None, pattern=HEX64)
    size: NonNegativeInt | None = None


class ImagePin(_Strict):
    """A container image: `ref` is human-readable, `digest` the pin (null = not resolved yet)."""

    ref: str
    digest: str | None = Field(None, pattern=r"^sha256:[0-9a-f]{64}$")
    archive: FilePin | None = None  # docker-archive of the image, when fetched/exported

    @property
    def pinned_ref(self) -> str:
        name = self.ref.split("@")[0]
        return f"{name.rsplit(':', 1)[0] if ':' in name.split('/')[-1] else name}@{self.digest}"


class DebPin(_Strict):
    """One Debian package, as its signed Packages index listed it. Every pin carries a URL and a
    sha256, so the input store (and an offline export) can fetch and check it alone."""

    version: str
    sha256: str = Field(pattern=HEX64)
    size: int = Field(ge=0)
    url: str

    def file(self) -> FilePin:
        return FilePin(url=self.url, sha256=self.sha256, size=self.size)


class ModelFile(_Strict):
    size: NonNegativeInt | None = None
    sha256: str | None = Field(None, pattern=HEX64)  # LFS files
    git_sha1: str | None = Field(None, pattern=r"^[0-9a-f]{40}$")  # other files


class ModelPin(_Strict):
    repo: str
    revision: str = "main"
    commit: str | None = Field(None, pattern=r"^[0-9a-f]{40}$")
    files: dict[str, ModelFile] = {}


class Lock(_Strict):
    version: StrictInt = VERSION
    debian: dict[str, Any] = {}
    tools: dict[str, str] = {}
    files: dict[str, FilePin] = {}
    images: dict[str, ImagePin] = {}
    models: dict[str, ModelPin] = {}
    # debs.<image>.<package>: the .debs an image is built from (the OS image's own: debs.os).
    debs: dict[str, dict[str, DebPin]] = {}

    @field_validator("version")
    @classmethod
    def _known_version(cls, v: int) -> int:
        if v != VERSION:
            raise ValueError(f"unknown lock version {v}: this mithril-build reads version {VERSION} "
                             "(upgrade mithril-build, or re-create the lock with `mithril-build lock`)")
        return v

    def file(self, name: str, locked: bool = True) -> FilePin:
        pin = self.files.get(name)
        if pin is None:
            raise BadInput(LOCK_FILE, f"files.{name}: no such entry", "add it and run `mithril-build lock`")
        if not pin.sha256:
            raise BadInput(LOCK_FILE, f"files.{name}.sha256: not pinned",
                           "run `mithril-build lock` where the source is reachable")
        return pin

    def image(self, name: str, locked: bool) -> ImagePin:
        pin = self.images.get(name)
        if pin is None:
            raise BadInput(LOCK_FILE, f"images.{name}: no such entry", "add it and run `mithril-build lock`")
        if not pin.digest and locked and not (pin.archive and pin.archive.sha256):
            raise BadInput(LOCK_FILE, f"images.{name}.digest: {pin.ref} is not resolved to a digest (--locked)",
                           "run `mithril-build lock` where the registry is reachable")
        if ":latest" in pin.ref:
            raise BadInput(LOCK_FILE, f"images.{name}.ref: ':latest' is not allowed", "pin a version tag")
        return pin

    def entry(self, section: str, name: str) -> dict:
        """The canonical JSON of one entry, for stage cache keys."""
        value = getattr(self, section).get(name)
        return value.model_dump(mode="json") if isinstance(value, BaseModel) else value


def load(path: Path) -> Lock:
    from .readers import load_yaml

    where = str(path)
    raw = load_yaml(path, where) if path.exists() or path.is_symlink() else {}
    if not isinstance(raw, dict):
        raise BadInput(where, "must be a YAML mapping")
    try:
        return Lock.model_validate(raw)
    except ValidationError as e:
        err = e.errors()[0]
        loc = ".".join(str(x) for x in err["loc"])
        msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"].removeprefix("Value error, ")
        raise BadInput(where, f"{loc}: {msg}") from None


def dump(lock: Lock, path: Path) -> None:
    """Write the lock atomically, sorted, with a header."""
    text = "# mithril.lock: every external input pinned by digest. Refresh with `mithril-build lock`.\n"
    text += yaml.safe_dump(lock.model_dump(mode="json", exclude_none=True), sort_keys=True, width=120)
    atomic_write(path, text.encode())


TMP_PREFIX = ".mithril-tmp-"  # every temporary name we make beside a result: a killed run's are recognisable


def atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f"{TMP_PREFIX}{path.name}.")
    try:
        os.fchmod(fd, 0o644)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def sha256_file(path: Path, progress: bool = False) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        bar = log.progress(os.fstat(f.fileno()).st_size, f"sha256 {path.name}") if progress else None
        while chunk := f.read(1 << 20):
            h.update(chunk)
            if bar:
                bar.update(len(chunk))
        if bar:
            bar.close()
    return h.hexdigest()


def download(url: str, dest: Path, what: str) -> None:
    """Fetch url to dest atomically, with a progress bar."""
    if not re.match(r"^https?://", url):
        raise BadInput(LOCK_FILE, f"{what}.url: only http(s) URLs are supported, got {url!r}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=".download.")
    try:
        with urllib.request.urlopen(url, timeout=60) as resp, os.fdopen(fd, "wb") as f:
            bar = log.progress(int(resp.headers.get("Content-Length") or 0) or None, f"fetch {what}")
            while chunk := resp.read(1 << 20):
                f.write(chunk)
                bar.update(len(chunk))
            bar.close()
        os.replace(tmp, dest)
    except OSError as e:
        os.unlink(tmp) if os.path.exists(tmp) else None
        raise ToolFailed(f"{what}: cannot fetch {url}: {getattr(e, 'reason', e)}") from None


class InputStore:
    """Pinned files, fetched once into <cache>/inputs/sha256/<hex>, re-verified on every use.

    With `offline` (an `export-inputs` folder), a file missing from the store is taken from that
    folder, never from the network. Otherwise a URL that no longer serves the file (Debian drops
    superseded versions from its pool) is retried on snapshot.debian.org at the lock's
    `debian.snapshot` timestamp."""

    def __init__(self, root: Path, lock: Lock, project: Path, offline: Path | None = None):
        self.root, self.lock, self.project, self.offline = root, lock, project, offline

    def path(self, name: str) -> Path:
        pin = self.lock.file(name)
        return self.pinned(pin, f"files.{name}")

    def pinned(self, pin: FilePin, what: str, check: Callable[[Path], object] | None = None) -> Path:
        """The pinned file, its sha256 checked. A file of the checkout (`path`) is hashed again
        whenever its identity (device, inode, size, mtime, ctime) differs from the last time it
        matched; then `check` (e.g. reading it as an image archive) runs too."""
        if pin.path:
            src = (self.project / pin.path).resolve()
            if not src.is_relative_to(self.project.resolve()):
                raise BadInput(LOCK_FILE, f"{what}.path: {pin.path!r} points outside the project")
            if not src.is_file():
                raise BadInput(LOCK_FILE, f"{what}.path: {pin.path} does not exist")
            if self._known(src) == pin.sha256:
                return src
            target = src
        else:
            if not pin.url:
                raise BadInput(LOCK_FILE, f"{what}: needs `url` or `path`")
            target = self.root / "sha256" / pin.sha256
            if not target.exists():
                self._fetch(pin, target, what)
        identity = _identity(target)
        actual = sha256_file(target)
        if actual != pin.sha256:
            if not pin.path:
                target.unlink()  # never keep a wrong file in the content-addressed store
                raise BadInput(LOCK_FILE, f"{what}.sha256: expected {pin.sha256}, the fetched file has {actual}",
                               "the source changed or the pin is wrong; re-pin only if you trust the new file")
            raise BadInput(LOCK_FILE, f"{what}.sha256: expected {pin.sha256}, but {pin.path} has {actual}",
                           "the file changed after it was pinned; restore it, or re-pin it if you trust it")
        if check is not None:
            check(target)
        if pin.path:
            self._remember(target, identity, actual)
        return target

    def copy(self, pin: FilePin, what: str, dest: Path) -> None:
        """Copy the pinned file to dest, hashing the bytes written: what lands in dest is what
        was checked, whatever happens to the source meanwhile."""
        if pin.path:
            src = self.pinned(pin, what)
        else:
            src = self.root / "sha256" / pin.sha256
            if not src.exists():
                self.pinned(pin, what)
        h = hashlib.sha256()
        with open(src, "rb") as f, open(dest, "wb") as out:
            while chunk := f.read(1 << 20):
                h.update(chunk)
                out.write(chunk)
        if h.hexdigest() != pin.sha256:
            dest.unlink()
            if not pin.path:
                src.unlink(missing_ok=True)  # never keep a wrong file in the content-addressed store
            raise BadInput(LOCK_FILE, f"{what}.sha256: expected {pin.sha256}, {pin.path or 'the stored file'} "
                                      f"has {h.hexdigest()}", "the file changed after it was checked; run again")

    IDENTITIES = "identities.json"

    def _known(self, path: Path) -> str | None:
        """The sha256 a checkout file had when it last matched its pin, if it is unchanged since."""
        try:
            known = json.loads((self.root / self.IDENTITIES).read_text()).get(str(path))
        except (OSError, ValueError, AttributeError, RecursionError):
            return None
        if isinstance(known, list) and len(known) == 6 and known[:5] == _identity(path):
            return known[5]
        return None

    def _remember(self, path: Path, identity: list[int], digest: str) -> None:
        if identity != _identity(path):
            return  # changed while we read it
        table = {}
        with contextlib.suppress(OSError, ValueError, RecursionError):
            loaded = json.loads((self.root / self.IDENTITIES).read_text())
            table = loaded if isinstance(loaded, dict) else {}
        table[str(path)] = [*identity, digest]
        with contextlib.suppress(OSError):  # only a cache: without it the file is hashed again
            atomic_write(self.root / self.IDENTITIES, json.dumps(table, indent=0, sort_keys=True).encode())

    def _fetch(self, pin: FilePin, target: Path, what: str) -> None:
        if self.offline is not None:
            src = self.offline / "sha256" / pin.sha256
            if not src.is_file():
                raise BadInput(str(src), f"missing from the inputs folder ({what})",
                               "export it again with `mithril-build export-inputs` (same lock)")
            if sha256_file(src) != pin.sha256:
                raise BadInput(str(src), f"content does not match its name ({what})", "the inputs folder is corrupt")
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f".{target.name}.part")
            shutil.copyfile(src, tmp)
            os.replace(tmp, target)
            return
        try:
            download(pin.url, target, what)
        except ToolFailed:
            snapshot = snapshot_url(pin.url, self.lock.debian)
            if snapshot is None:
                raise
            log.warn(f"{what}: {pin.url} is gone; trying snapshot.debian.org")
            download(snapshot, target, what)


def _identity(path: Path) -> list[int]:
    st = os.stat(path)
    return [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


def snapshot_url(url: str, debian: dict) -> str | None:
    """The snapshot.debian.org URL of a pool file of the lock's mirror or security archive, at
    the lock's `debian.snapshot` time (e.g. 20261128T000000Z), or None."""
    stamp = debian.get("snapshot")
    if not stamp:
        return None
    for key, archive in (("mirror", "debian"), ("security", "debian-security")):
        base = str(debian.get(key, "")).rstrip("/")
        if base and url.startswith(base + "/pool/"):
            return f"https://snapshot.debian.org/archive/{archive}/{stamp}/{url[len(base) + 1:]}"
    return None
