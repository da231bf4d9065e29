"""mithril.lock: every external input pinned by digest (the input store that fetches them is
`inputs.InputStore`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, Field, NonNegativeInt, StrictInt, field_validator

from .errors import BadInput
from .files import atomic_write
from .readers import Strict, load_model

LOCK_FILE = "mithril.lock"
VERSION = 1
HEX64 = r"^[0-9a-f]{64}$"


class FilePin(Strict):
    """A file fetched by URL (or read from a path in the checkout) and pinned by sha256."""

    url: str | None = None
    path: str | None = None
    sha256: str | None = Field(None, pattern=HEX64)
    size: NonNegativeInt | None = None
    # a signed file (an NVIDIA RIM) whose signature and certificates were checked when it was
    # pinned: that time (ISO 8601, UTC), at which verifiers keep judging its certificates
    checked_at: str | None = Field(None, pattern=r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
    # a labelled stand-in for an input unreachable from here (tests: k3s, NVIDIA's images): why.
    # The build says so in its log; --locked refuses it, so no release is built from one.
    stand_in: str | None = None


class ImagePin(Strict):
    """A container image: `ref` is human-readable, `digest` the pin (null = not resolved yet)."""

    ref: str
    digest: str | None = Field(None, pattern=r"^sha256:[0-9a-f]{64}$")
    archive: FilePin | None = None  # docker-archive of the image, when fetched/exported

    @property
    def pinned_ref(self) -> str:
        name = self.ref.split("@")[0]
        return f"{name.rsplit(':', 1)[0] if ':' in name.split('/')[-1] else name}@{self.digest}"


class DebPin(Strict):
    """One Debian package, as its signed Packages index listed it. Every pin carries a URL and a
    sha256, so the input store (and an offline export) can fetch and check it alone."""

    version: str
    sha256: str = Field(pattern=HEX64)
    size: int = Field(ge=0)
    url: str

    def file(self) -> FilePin:
        return FilePin(url=self.url, sha256=self.sha256, size=self.size)


class ModelFile(Strict):
    size: NonNegativeInt | None = None
    sha256: str | None = Field(None, pattern=HEX64)  # LFS files
    git_sha1: str | None = Field(None, pattern=r"^[0-9a-f]{40}$")  # other files


class ModelPin(Strict):
    repo: str
    revision: str = "main"
    commit: str | None = Field(None, pattern=r"^[0-9a-f]{40}$")
    files: dict[str, ModelFile] = {}


class Lock(Strict):
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

    def entry(self, section: str, name: str) -> Any:
        """The JSON of one entry (None when there is none), for stage cache keys."""
        value = getattr(self, section).get(name)
        if section == "debs" and value is not None:  # {package: pin}
            return {n: p.model_dump(mode="json") for n, p in sorted(value.items())}
        return value.model_dump(mode="json") if isinstance(value, BaseModel) else value


def load(path: Path) -> Lock:
    """The lock; none yet is an empty one."""
    return load_model(path, Lock) if path.exists() or path.is_symlink() else Lock()


def dump(lock: Lock, path: Path) -> None:
    """Write the lock atomically, sorted, with a header."""
    text = "# mithril.lock: every external input pinned by digest. Refresh with `mithril-build lock`.\n"
    text += yaml.safe_dump(lock.model_dump(mode="json", exclude_none=True), sort_keys=True, width=120)
    atomic_write(path, text.encode())
