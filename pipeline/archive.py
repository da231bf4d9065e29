"""Safe, deterministic archive handling: tar validation, .deb extraction, reproducible tar writing."""

from __future__ import annotations

import io
import lzma
import posixpath
import tarfile
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from .errors import BadInput


def check_member_name(name: str, where: str) -> str:
    """Reject absolute paths and `..` components; return the normalised relative name."""
    if name.startswith(("/", "\\")):
        raise BadInput(where, f"archive member {name!r} has an absolute path")
    norm = posixpath.normpath(name)
    if norm == ".." or norm.startswith("../") or "/../" in f"/{name}/":
        raise BadInput(where, f"archive member {name!r} escapes the archive root ('..')")
    return norm


def validate_tar(path: Path, where: str | None = None) -> int:
    """Check every member of a tar archive: no absolute or `..` paths, no device files or FIFOs,
    no links pointing outside the archive. Returns the member count."""
    where = where or str(path)
    try:
        with tarfile.open(path, "r:*") as tf:
            count = 0
            for m in tf:
                count += 1
                name = check_member_name(m.name, where)
                if m.ischr() or m.isblk() or m.isfifo():
                    raise BadInput(where, f"archive member {m.name!r} is a device file or FIFO")
                if m.issym():
                    target = m.linkname if m.linkname.startswith("/") else posixpath.join(posixpath.dirname(name), m.linkname)
                    if m.linkname.startswith("/") or posixpath.normpath(target).startswith(".."):
                        raise BadInput(where, f"archive member {m.name!r} is a symlink escaping the archive "
                                              f"(-> {m.linkname})")
                if m.islnk():
                    check_member_name(m.linkname, where)
    except tarfile.TarError as e:
        raise BadInput(where, f"not a readable tar archive: {e}") from None
    except OSError as e:
        raise BadInput(where, f"cannot read archive: {e.strerror or e}") from None
    return count


def deb_member(deb: Path, member: str) -> bytes:
    """Read one file out of a Debian package's data.tar.* (ar archive), without dpkg."""
    where = str(deb)
    data = deb.read_bytes()
    if not data.startswith(b"!<arch>\n"):
        raise BadInput(where, "not a Debian package (no ar header)")
    pos = 8
    while pos + 60 <= len(data):
        name = data[pos:pos + 16].decode().strip().rstrip("/")
        size = int(data[pos + 48:pos + 58].decode().strip())
        body = data[pos + 60:pos + 60 + size]
        pos += 60 + size + (size & 1)
        if not name.startswith("data.tar"):
            continue
        if name.endswith(".xz"):
            body = lzma.decompress(body)
        elif name.endswith(".gz"):
            body = zlib.decompress(body, 31)
        elif name.endswith(".zst"):
            raise BadInput(where, "zstd-compressed data.tar is not supported")
        with tarfile.open(fileobj=io.BytesIO(body)) as tf:
            for m in tf:
                check_member_name(m.name, where)
                if posixpath.normpath(m.name) == posixpath.normpath(member) and m.isfile():
                    return tf.extractfile(m).read()
        raise BadInput(where, f"package has no file {member!r}")
    raise BadInput(where, "package has no data.tar member")


@dataclass(frozen=True)
class Entry:
    """One member of a reproducible tar: a file (data), a directory, or a symlink (target)."""

    path: str
    mode: int = 0o644
    data: bytes | None = None
    target: str | None = None

    @property
    def is_dir(self) -> bool:
        return self.data is None and self.target is None


def deterministic_tar(entries: Iterable[Entry], mtime: int) -> bytes:
    """A ustar archive with sorted members, owner root:root, fixed mtime and modes."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tf:
        for e in sorted(entries, key=lambda e: e.path):
            info = tarfile.TarInfo(e.path)
            info.mtime, info.uid, info.gid, info.uname, info.gname = mtime, 0, 0, "root", "root"
            info.mode = e.mode
            if e.target is not None:
                info.type, info.linkname = tarfile.SYMTYPE, e.target
                tf.addfile(info)
            elif e.is_dir:
                info.type = tarfile.DIRTYPE
                tf.addfile(info)
            else:
                info.size = len(e.data)
                tf.addfile(info, io.BytesIO(e.data))
    return buf.getvalue()
