"""The content-addressed stage store and publishing into out/<profile>/.

<cache>/stages/<stage>/<key>/ holds a finished result: its output files and `_record.json`,
written last. A result is only ever renamed into place whole; `tmp/` holds builds under way and
is emptied by the next run that takes the cache lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import log
from .files import TMP_PREFIX, atomic_write, sha256_file, tree_digests

RECORD = "_record.json"


def output_digests(folder: Path) -> dict[str, str]:
    return {k: v for k, v in tree_digests(folder, ".").items() if k != RECORD}


@dataclass(frozen=True)
class StageResult:
    """A finished stage result in the store: its folder and its record."""

    dir: Path
    record: dict

    @property
    def outputs(self) -> dict[str, str]:
        return self.record["outputs"]


@dataclass
class Cache:
    root: Path
    _lockfile: Any = field(default=None, repr=False)

    def stage_dir(self, stage: str) -> Path:
        return self.root / "stages" / stage

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        """One mithril-build at a time per cache; stale temp folders of killed runs are removed."""
        with self._locked(fcntl.LOCK_EX, create=True):
            shutil.rmtree(self.root / "tmp", ignore_errors=True)
            yield

    @contextlib.contextmanager
    def shared(self) -> Iterator[None]:
        """For commands that only read the cache (plan, status): they wait for a running build
        rather than read results being replaced. No cache yet: nothing to read, nothing created."""
        if not self.root.is_dir():
            yield
            return
        with self._locked(fcntl.LOCK_SH, create=False):
            yield

    @contextlib.contextmanager
    def _locked(self, mode: int, create: bool) -> Iterator[None]:
        if create:
            self.root.mkdir(parents=True, exist_ok=True)
            lf = open(self.root / ".lock", "a")  # noqa: SIM115 -- closed below
        else:
            try:
                lf = open(self.root / ".lock", "a")  # noqa: SIM115
            except OSError:  # a cache this user may only read (another user's): read it unlocked
                yield
                return
        with lf:
            try:
                fcntl.flock(lf, mode | fcntl.LOCK_NB)
            except BlockingIOError:
                log.info(f"waiting for another mithril-build using {self.root}")
                fcntl.flock(lf, mode)
            yield

    def lookup(self, stage: str, key: str, verify: bool = True, discard: bool = True) -> StageResult | None:
        """The stored result for key, its outputs re-hashed (verify). A broken result is removed
        (discard), except by readers, which only report it as missing."""
        folder = self.stage_dir(stage) / key
        rec_path = folder / RECORD
        if not rec_path.is_file():
            return None
        try:
            record = json.loads(rec_path.read_text())
        except (OSError, ValueError, RecursionError):
            record = None
        if not isinstance(record, dict) or record.get("key") != key or not isinstance(record.get("outputs"), dict):
            if discard:
                self._discard(folder, "its record is unreadable")
            return None
        if verify:
            actual = output_digests(folder)
            if actual != record["outputs"]:
                bad = sorted(k for k in set(actual) | set(record["outputs"])
                             if actual.get(k) != record["outputs"].get(k))
                if discard:
                    self._discard(folder, "outputs changed since they were stored: " + ", ".join(bad[:5]))
                return None
        return StageResult(folder, record)

    def _discard(self, folder: Path, why: str) -> None:
        log.warn(f"discarding cached {folder.parent.name} result {folder.name[:12]}: {why}")
        shutil.rmtree(folder, ignore_errors=True)

    def new_tmp(self, stage: str) -> Path:
        (self.root / "tmp").mkdir(parents=True, exist_ok=True)
        path = self.root / "tmp" / f"{stage}-{uuid.uuid4().hex[:8]}"
        path.mkdir()
        return path

    def store(self, stage: str, key: str, tmp: Path, record: dict) -> StageResult:
        """Write the record last, then rename the finished folder into place."""
        atomic_write(tmp / RECORD, json.dumps(record, indent=2, sort_keys=True).encode() + b"\n")
        final = self.stage_dir(stage) / key
        final.parent.mkdir(parents=True, exist_ok=True)
        if final.exists():
            shutil.rmtree(final)
        os.rename(tmp, final)
        return StageResult(final, record)

    def remember(self, stage: str, profile: str, key_fields: dict) -> None:
        atomic_write(self.stage_dir(stage) / f"last-{profile}.json",
                     json.dumps(key_fields, indent=1, sort_keys=True).encode())

    def last(self, stage: str, profile: str) -> dict | None:
        path = self.stage_dir(stage) / f"last-{profile}.json"
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError, RecursionError):
            return None



RECORDS = "records"  # out/<profile>/records/<stage>.json (appdisk.json and os.json are outputs)
UNSUMMED = {"SHA256SUMS", "boot-serial.log", "run-serial.log", "deployment.json"}


def publish(result: StageResult, stage: str, out_dir: Path) -> None:
    """Hard-link (or copy) a stage's outputs into out/<profile>/, each file replaced atomically;
    files the previous build of this stage published and this one does not are removed. No
    temporary name survives: a file already linked to the cached one is left as it is (renaming
    a hard link onto itself would do nothing and leave the temporary name behind)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for leftover in out_dir.rglob(TMP_PREFIX + "*"):  # of a killed run (we hold the cache lock)
        leftover.unlink(missing_ok=True)
    rec_path = out_dir / RECORDS / f"{stage}.json"
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError, RecursionError):
        for old in set(json.loads(rec_path.read_text())["outputs"]) - set(result.outputs):
            if ".." not in Path(old).parts and not Path(old).is_absolute():
                (out_dir / old).unlink(missing_ok=True)
    for rel in result.outputs:
        src, dst = result.dir / rel, out_dir / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        if not src.is_symlink() and _same_file(src, dst):
            continue
        tmp = dst.with_name(f"{TMP_PREFIX}{uuid.uuid4().hex[:8]}-{dst.name}")
        try:
            if src.is_symlink():
                os.symlink(os.readlink(src), tmp)
            else:
                try:
                    os.link(src, tmp)
                except OSError:
                    shutil.copy2(src, tmp)
            os.replace(tmp, dst)
        finally:
            tmp.unlink(missing_ok=True)
    atomic_write(rec_path, json.dumps(result.record, indent=2, sort_keys=True).encode() + b"\n", keep_same=True)


def _same_file(a: Path, b: Path) -> bool:
    try:
        return not b.is_symlink() and os.path.samefile(a, b)
    except OSError:
        return False


def write_sha256sums(out_dir: Path) -> None:
    """SHA256SUMS of the published artifacts (stage records and logs excluded), sorted by path."""
    lines = []
    for path in sorted(out_dir.rglob("*")):
        rel = path.relative_to(out_dir).as_posix()
        if (path.is_file() and not path.name.startswith(".") and rel not in UNSUMMED
                and not rel.startswith(RECORDS + "/")):
            lines.append(f"{sha256_file(path)}  {rel}\n")
    atomic_write(out_dir / "SHA256SUMS", "".join(lines).encode(), keep_same=True)
