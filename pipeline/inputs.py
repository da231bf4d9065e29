"""External inputs: the content-addressed input store that fetches and checks every pinned file,
and offline rebuilds.

`export-inputs DIR` writes every external input of a profile's build (the .debs of the OS image
and of the images built here, pinned files and archives) into DIR, named by sha256, with an
index; `--inputs DIR` then builds from DIR alone (InputStore's offline mode), never touching the
network.

DIR/index.json: {"version": 1, "profile", "inputs": {lock entry: {"sha256", "size", "url"}}};
DIR/sha256/<hex>: the files.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

from . import log
from .errors import BadInput, ToolFailed
from .files import atomic_write, copy_hashed, identity, sha256_file
from .lock import LOCK_FILE, FilePin, Lock

INDEX = "index.json"
VERSION = 1
RETRY_PAUSES = (2, 10)  # seconds before each retry of a failed download, before snapshot.debian.org


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

    def __init__(self, root: Path, lock: Lock, project: Path, offline: Path | None = None,
                 trust_identity: bool = True):
        self.root, self.lock, self.project, self.offline = root, lock, project, offline
        self.trust_identity = trust_identity  # False (--verify): checkout files hashed on every use

    def path(self, name: str) -> Path:
        pin = self.lock.file(name)
        return self.pinned(pin, f"files.{name}")

    def pinned(self, pin: FilePin, what: str, check: Callable[[Path], object] | None = None) -> Path:
        """The pinned file, its sha256 checked. A file of the checkout (`path`) is hashed again
        whenever its identity (device, inode, size, mode, mtime, ctime) differs from the last time it
        matched; then `check` (e.g. reading it as an image archive) runs too."""
        if pin.path:
            src = (self.project / pin.path).resolve()
            if not src.is_relative_to(self.project.resolve()):
                raise BadInput(LOCK_FILE, f"{what}.path: {pin.path!r} points outside the project")
            if not src.is_file():
                raise BadInput(LOCK_FILE, f"{what}.path: {pin.path} does not exist")
            if self.trust_identity and self._known(src) == pin.sha256:
                return src
            target = src
        else:
            if not pin.url:
                raise BadInput(LOCK_FILE, f"{what}: needs `url` or `path`")
            target = self.root / "sha256" / pin.sha256
            if not target.exists():
                self._fetch(pin, target, what)
        before = identity(target)
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
            self._remember(target, before, actual)
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
        actual = copy_hashed(src, dest)
        if actual != pin.sha256:
            dest.unlink()
            if not pin.path:
                src.unlink(missing_ok=True)  # never keep a wrong file in the content-addressed store
            raise BadInput(LOCK_FILE, f"{what}.sha256: expected {pin.sha256}, {pin.path or 'the stored file'} "
                                      f"has {actual}", "the file changed after it was checked; run again")

    IDENTITIES = "identities.json"

    def _known(self, path: Path) -> str | None:
        """The sha256 a checkout file had when it last matched its pin, if it is unchanged since."""
        try:
            known = json.loads((self.root / self.IDENTITIES).read_text()).get(str(path))
        except (OSError, ValueError, AttributeError, RecursionError):
            return None
        if isinstance(known, list) and len(known) == 7 and known[:6] == identity(path):
            return known[6]
        return None

    def _remember(self, path: Path, before: list[int] | None, digest: str) -> None:
        if before is None or before != identity(path):
            return  # changed while we read it
        table = {}
        with contextlib.suppress(OSError, ValueError, RecursionError):
            loaded = json.loads((self.root / self.IDENTITIES).read_text())
            table = loaded if isinstance(loaded, dict) else {}
        table[str(path)] = [*before, digest]
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
        for pause in RETRY_PAUSES:  # a mirror's brief hiccup (seen: one .deb "gone" for minutes) is not an error
            try:
                download(pin.url, target, what)
                return
            except ToolFailed as e:
                log.warn(f"{what}: {e}; trying again in {pause} s")
                time.sleep(pause)
        try:
            download(pin.url, target, what)
        except ToolFailed:
            snapshot = snapshot_url(pin.url, self.lock.debian)
            if snapshot is None:
                raise
            log.warn(f"{what}: {pin.url} is gone; trying snapshot.debian.org")
            download(snapshot, target, what)


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


def export(store: InputStore, pins: dict[str, FilePin], profile: str, dest: Path) -> dict:
    """Fetch (or take from the input store) every input, checked against its pin, into dest."""
    files = dest / "sha256"
    files.mkdir(parents=True, exist_ok=True)
    bar = log.progress(len(pins), "export inputs", unit="file")
    for name, pin in pins.items():
        src = store.pinned(pin, name)
        target = files / pin.sha256
        if not (target.is_file() and sha256_file(target) == pin.sha256):
            tmp = target.with_name(f".{target.name}.part")
            shutil.copyfile(src, tmp)
            os.replace(tmp, target)
        bar.update(1)
    bar.close()
    index = {"version": VERSION, "profile": profile,
             "inputs": {n: {"sha256": p.sha256, "size": p.size, "url": p.url or p.path} for n, p in pins.items()}}
    atomic_write(dest / INDEX, json.dumps(index, indent=1, sort_keys=True).encode() + b"\n")  # last: marks it whole
    return {"folder": str(dest), "inputs": len(pins),
            "bytes": sum(p.size or 0 for p in pins.values())}


def check_folder(folder: Path) -> Path:
    """An inputs folder as `--inputs` takes it: one that export-inputs finished writing."""
    from .readers import load_json

    index = folder / INDEX
    doc = load_json(index, fix="not a finished `mithril-build export-inputs` folder")
    if not isinstance(doc, dict) or type(doc.get("version")) is not int or doc["version"] != VERSION \
            or not isinstance(doc.get("inputs"), dict):
        raise BadInput(str(index), f"version: expected {VERSION} with an `inputs` object")
    return folder.resolve()


def verify_folder(folder: Path, pins: dict[str, FilePin]) -> None:
    """Before an offline build: every input the profile needs is in the folder and is what its
    name says, so that a bad folder fails before anything is built (one line naming the file)."""
    bar = log.progress(len(pins), "check inputs", unit="file")
    for name, pin in pins.items():
        path = folder / "sha256" / pin.sha256
        if not path.is_file():
            raise BadInput(str(path), f"missing from the inputs folder ({name})",
                           "export it again with `mithril-build export-inputs` (same lock)")
        if sha256_file(path) != pin.sha256:
            raise BadInput(str(path), f"content does not match its name ({name})", "the inputs folder is corrupt")
        bar.update(1)
    bar.close()
