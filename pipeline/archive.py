"""Safe, deterministic archive handling: tar validation, .deb extraction, reproducible tar writing."""

from __future__ import annotations

import io
import lzma
import posixpath
import tarfile
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from .errors import BadInput


def first_line(e: Exception) -> str:
    """tarfile's errors can list every method it tried, one a line."""
    return (str(e).splitlines() or [type(e).__name__])[0]


def check_member_name(name: str, where: str) -> str:
    """Reject absolute paths and `..` components; return the normalised relative name."""
    if name.startswith(("/", "\\")):
        raise BadInput(where, f"archive member {name!r} has an absolute path")
    norm = posixpath.normpath(name)
    if norm == ".." or norm.startswith("../") or "/../" in f"/{name}/":
        raise BadInput(where, f"archive member {name!r} escapes the archive root ('..')")
    return norm


def tar_members(tf: tarfile.TarFile) -> Iterator[tarfile.TarInfo]:
    """tf's members as they are read. tarfile keeps a list of every header it has read (memory
    growing with the member count: ~1 KiB each, 1.5 million in 768 MiB of empty files); this
    empties it as it goes, so only hard link members cannot be opened with extractfile."""
    while (m := tf.next()) is not None:
        tf.members.clear()
        yield m


def validate_tar(path: Path, where: str | None = None) -> int:
    """Check every member of a tar archive: no absolute or `..` paths, no device files or FIFOs,
    no links pointing outside the archive. Returns the member count."""
    where = where or str(path)
    try:
        with tarfile.open(path, "r:*") as tf:
            count = 0
            for m in tar_members(tf):
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
        raise BadInput(where, f"not a readable tar archive: {first_line(e)}") from None
    except OSError as e:
        raise BadInput(where, f"cannot read archive: {e.strerror or e}") from None
    return count


def deb_data(deb: Path) -> bytes:
    """The uncompressed data.tar of a Debian package (an ar archive), without dpkg."""
    return _deb_tar(deb, "data")


def deb_control(deb: Path) -> str:
    """The control file of a Debian package (its stanza: Package, Version, Depends, …)."""
    where = str(deb)
    try:
        with tarfile.open(fileobj=io.BytesIO(_deb_tar(deb, "control"))) as tf:
            for m in tf:
                if posixpath.normpath(m.name) == "control" and m.isfile():
                    return tf.extractfile(m).read().decode("utf-8")
    except (tarfile.TarError, UnicodeDecodeError) as e:
        raise BadInput(where, f"unreadable control.tar: {e}") from None
    raise BadInput(where, "control.tar has no control file")


def _deb_tar(deb: Path, part: str) -> bytes:
    """The uncompressed <part>.tar (data or control) of a .deb. xz and gzip are read in Python;
    zstd (the standard library has none before 3.14) with the zstd tool."""
    where = str(deb)
    data = deb.read_bytes()
    if not data.startswith(b"!<arch>\n"):
        raise BadInput(where, "not a Debian package (no ar header)")
    pos = 8
    while pos + 60 <= len(data):
        name = data[pos:pos + 16].decode(errors="replace").strip().rstrip("/")
        try:
            size = int(data[pos + 48:pos + 58].decode().strip())
        except ValueError:
            raise BadInput(where, "corrupt ar member header") from None
        body = data[pos + 60:pos + 60 + size]
        pos += 60 + size + (size & 1)
        if not name.startswith(f"{part}.tar"):
            continue
        try:
            if name == f"{part}.tar":
                return body
            if name == f"{part}.tar.xz":
                return lzma.decompress(body)
            if name == f"{part}.tar.gz":
                return zlib.decompress(body, 31)
        except (lzma.LZMAError, zlib.error) as e:
            raise BadInput(where, f"{name} does not decompress: {e}") from None
        if name == f"{part}.tar.zst":
            from .run import run

            return run(["zstd", "-d", "-c", "-q"], input=body).stdout
        raise BadInput(where, f"unsupported member {name}")
    raise BadInput(where, f"package has no {part}.tar member")


def tar_entries(data: bytes, where: str) -> Iterator[Entry]:
    """The members of an uncompressed tar as Entries, safely: no absolute or `..` names, no
    device files or FIFOs, hardlinks only to earlier members (they carry their target's data and
    name it in `link`). Symlink targets are kept as they are: they resolve inside the image."""
    files: dict[str, bytes] = {}
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tf:
            for m in tf:
                name = check_member_name(m.name, where)
                if name == ".":
                    continue
                mode = m.mode & 0o7777
                if m.isdir():
                    yield Entry(name, mode)
                elif m.issym():
                    yield Entry(name, 0o777, target=m.linkname)
                elif m.islnk():
                    link = check_member_name(m.linkname, where)
                    if link not in files:
                        raise BadInput(where, f"hardlink {m.name!r} points to {m.linkname!r}, not an earlier file")
                    yield Entry(name, mode, files[link], link=link)
                elif m.isfile():
                    files[name] = tf.extractfile(m).read()
                    yield Entry(name, mode, files[name])
                else:
                    raise BadInput(where, f"archive member {m.name!r} is a device file or FIFO")
    except tarfile.TarError as e:
        raise BadInput(where, f"not a readable tar archive: {first_line(e)}") from None


def deb_member(deb: Path, member: str) -> bytes:
    """Read one regular file out of a Debian package's data.tar."""
    want = posixpath.normpath(member)
    for e in tar_entries(deb_data(deb), str(deb)):
        if e.path == want and e.data is not None:
            return e.data
    raise BadInput(str(deb), f"package has no file {member!r}")


@dataclass(frozen=True)
class Entry:
    """One member of a reproducible tar: a file (data), a directory, a symlink (target) or a
    hardlink to an earlier member (link)."""

    path: str
    mode: int = 0o644
    data: bytes | None = None
    target: str | None = None
    link: str | None = None

    @property
    def is_dir(self) -> bool:
        return self.data is None and self.target is None and self.link is None


def deterministic_tar(entries: Iterable[Entry], mtime: int) -> bytes:
    """A ustar archive with sorted members, owner root:root, fixed mtime and modes. A hardlink
    must sort after its target (callers make the first path of a link group the file)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tf:
        for e in sorted(entries, key=lambda e: e.path):
            info = tarfile.TarInfo(e.path)
            info.mtime, info.uid, info.gid, info.uname, info.gname = mtime, 0, 0, "root", "root"
            info.mode = e.mode
            if e.target is not None:
                info.type, info.linkname = tarfile.SYMTYPE, e.target
                tf.addfile(info)
            elif e.link is not None:
                info.type, info.linkname = tarfile.LNKTYPE, e.link
                tf.addfile(info)
            elif e.is_dir:
                info.type = tarfile.DIRTYPE
                tf.addfile(info)
            else:
                info.size = len(e.data)
                tf.addfile(info, io.BytesIO(e.data))
    return buf.getvalue()
