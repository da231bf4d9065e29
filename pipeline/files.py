"""File helpers every part of the build shares: sha256 of files and trees, atomic writes, and
the canonical JSON that cache keys are hashed from."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import stat
import tempfile
from pathlib import Path
from typing import Any

from . import invocation, log

TMP_PREFIX = ".mithril-tmp-"  # every temporary name we make beside a result: a killed run's are recognisable
SKIP_DIRS = {"__pycache__", ".pytest_cache"}


def identity(path: Path | str) -> list[int] | None:
    """(device, inode, size, mode, mtime, ctime) of path itself, None if absent. Any write to a
    file moves its ctime, which no user call can set back."""
    try:
        st = os.lstat(path)
    except OSError:
        return None
    return [st.st_dev, st.st_ino, st.st_size, st.st_mode, st.st_mtime_ns, st.st_ctime_ns]


def sha256_file(path: Path, progress: bool = False) -> str:
    h = hashlib.sha256()
    before = identity(path)
    with open(path, "rb") as f:
        bar = log.progress(os.fstat(f.fileno()).st_size, f"sha256 {path.name}") if progress else None
        while chunk := f.read(1 << 20):
            h.update(chunk)
            if bar:
                bar.update(len(chunk))
        if bar:
            bar.close()
    # the warm no-op (noop.py) rests only on files whose identity still is the one their bytes were read at
    invocation.current().hashed[os.path.abspath(path)] = before if identity(path) == before else None
    return h.hexdigest()


def copy_hashed(src: Path, dest: Path) -> str:
    """Copy src to dest; the sha256 of the bytes written."""
    h = hashlib.sha256()
    with open(src, "rb") as f, open(dest, "wb") as out:
        while chunk := f.read(1 << 20):
            h.update(chunk)
            out.write(chunk)
    return h.hexdigest()


def atomic_write(path: Path, data: bytes, keep_same: bool = False, mode: int = 0o644) -> None:
    """Replace path with data in one rename. `keep_same`: leave a file that already holds exactly
    data as it is (its identity unchanged, so a warm no-op that rests on it still holds)."""
    if keep_same:
        with contextlib.suppress(OSError):
            if path.stat().st_size == len(data) and path.read_bytes() == data:
                return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f"{TMP_PREFIX}{path.name}.")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def canonical(obj: Any) -> bytes:
    """Sorted keys, no spaces, UTF-8: equal data, equal bytes."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def digest(obj: Any) -> str:
    return hashlib.sha256(canonical(obj)).hexdigest()


def tree_digests(base: Path, *relpaths: str) -> dict[str, str]:
    """{relpath: sha256} of every file under the given paths; executables get a '+x' suffix,
    symlinks are recorded by target. Sorted, independent of mtimes."""
    out: dict[str, str] = {}
    for rel in relpaths:
        top = base / rel
        if not top.exists() and not top.is_symlink():
            continue
        paths = [top] if not top.is_dir() or top.is_symlink() else sorted(
            p for p in top.rglob("*") if not SKIP_DIRS & set(p.relative_to(base).parts))
        for p in paths:
            key = p.relative_to(base).as_posix()
            if p.is_symlink():
                out[key] = "symlink:" + os.readlink(p)
            elif p.is_file():
                x = "+x" if os.stat(p).st_mode & stat.S_IXUSR else ""
                out[key] = sha256_file(p) + x
    return dict(sorted(out.items()))
