"""Read a FAT12/16/32 file system (the ESP) straight from a disk image file: list files and
extract one, without root, loop devices or mounting.

Only what an ESP needs: 8.3 and long (VFAT) names, sub-directories, cluster chains. Names match
case-insensitively, as FAT does.
"""

from __future__ import annotations

import os
import struct
from array import array
from dataclasses import dataclass
from pathlib import Path

from ..errors import BadInput
from . import gpt

ATTR_LFN = 0x0F
ATTR_VOLUME = 0x08
ATTR_DIR = 0x10


@dataclass(frozen=True)
class Entry:
    name: str
    is_dir: bool
    cluster: int
    size: int


def _lfn_checksum(short: bytes) -> int:
    s = 0
    for c in short:
        s = (((s & 1) << 7) + (s >> 1) + c) & 0xFF
    return s


def _short_name(raw: bytes) -> str:
    base = raw[:8].rstrip(b" ")
    ext = raw[8:11].rstrip(b" ")
    if base[:1] == b"\x05":  # a real 0xE5 first byte (KANJI lead)
        base = b"\xe5" + base[1:]
    flags = raw[12]  # Windows NT case flags: 0x08 base lower-case, 0x10 extension lower-case
    name = base.decode("latin-1")
    extension = ext.decode("latin-1")
    if flags & 0x08:
        name = name.lower()
    if flags & 0x10:
        extension = extension.lower()
    return f"{name}.{extension}" if extension else name


class FatFs:
    """A FAT file system at `offset` (bytes) of `path`, `size` bytes long."""

    def __init__(self, path: Path, offset: int = 0, size: int | None = None, where: str | None = None):
        self.path = Path(path)
        self.where = where or str(path)
        self.offset = offset
        self._f = open(path, "rb")  # noqa: SIM115 (closed by close() / __exit__)
        try:
            self._parse(size)
        except BaseException:
            self._f.close()
            raise

    def close(self) -> None:
        self._f.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _bad(self, what: str) -> BadInput:
        return BadInput(self.where, what, "the ESP must be a FAT12/16/32 file system")

    def _read(self, pos: int, length: int) -> bytes:
        self._f.seek(self.offset + pos)
        data = self._f.read(length)
        if len(data) != length:
            raise self._bad(f"truncated FAT file system (wanted {length} bytes at {pos})")
        return data

    def _parse(self, size: int | None) -> None:
        self.boot_sector = boot = self._read(0, 512)
        if boot[510:512] != b"\x55\xaa":
            raise self._bad("no FAT boot sector (missing 55 AA signature)")
        (bps, spc, reserved, nfats, root_entries, total16, _media, fat16) = struct.unpack_from("<HBHBHHBH", boot, 11)
        total32, fat32 = struct.unpack_from("<II", boot, 32)
        if bps not in (512, 1024, 2048, 4096) or spc == 0 or spc & (spc - 1) or nfats == 0 or reserved == 0:
            raise self._bad("implausible FAT boot sector (sector size, cluster size or FAT count)")
        fat_sectors = fat16 or fat32
        total = total16 or total32
        root_sectors = (root_entries * 32 + bps - 1) // bps
        self.data_start = (reserved + nfats * fat_sectors + root_sectors) * bps
        if fat_sectors == 0 or total * bps <= self.data_start:
            raise self._bad("implausible FAT boot sector (sizes)")
        if size is not None and total * bps > size:
            raise self._bad(f"file system ({total * bps} bytes) is larger than its partition ({size} bytes)")
        available = os.fstat(self._f.fileno()).st_size - self.offset
        if total * bps > available:
            raise self._bad(f"truncated: the file system needs {total * bps} bytes, the image has {available}")
        self.clusters = (total * bps - self.data_start) // (spc * bps)
        self.kind = 12 if self.clusters < 4085 else 16 if self.clusters < 65525 else 32
        self.cluster_size = spc * bps
        self.fat = self._read(reserved * bps, fat_sectors * bps)
        if self.kind == 32:
            self.root_cluster = struct.unpack_from("<I", boot, 44)[0]
            self.root_fixed = None
        else:
            self.root_cluster = 0
            self.root_fixed = ((reserved + nfats * fat_sectors) * bps, root_entries * 32)

    def _next(self, cluster: int) -> int | None:
        """The cluster after `cluster` in its chain, or None at the end of the chain."""
        if self.kind == 12:
            v = struct.unpack_from("<H", self.fat, cluster + cluster // 2)[0]
            v = v >> 4 if cluster & 1 else v & 0xFFF
            end = 0xFF8
        elif self.kind == 16:
            v = struct.unpack_from("<H", self.fat, cluster * 2)[0]
            end = 0xFFF8
        else:
            v = struct.unpack_from("<I", self.fat, cluster * 4)[0] & 0x0FFFFFFF
            end = 0x0FFFFFF8
        if v >= end:
            return None
        if v < 2 or v >= self.clusters + 2:
            raise self._bad(f"broken cluster chain (cluster {cluster} -> {v:#x})")
        return v

    def _contiguous(self, cluster: int, limit: int) -> int:
        """How many FAT entries from `cluster` on just point to the next cluster (at most
        `limit`): compared a block at a time, so a contiguous file costs no per-cluster Python."""
        if self.kind == 12:
            return 0
        width, code = (4, "I") if self.kind == 32 else (2, "H")
        n, step = 0, 256
        while n < limit:
            start = cluster + n
            k = min(step, limit - n, len(self.fat) // width - start - 1)
            if k <= 0 or self.fat[start * width:(start + k) * width] != array(code, range(start + 1, start + 1 + k)).tobytes():
                break
            n += k
            step = min(step * 2, 1 << 16)
        return n

    def _runs(self, first: int, limit: int | None) -> list[tuple[int, int]]:
        """The chain from `first` as (first cluster, count) runs of consecutive clusters; at most
        `limit` clusters are followed (None: to the end)."""
        runs: list[tuple[int, int]] = []
        cluster, seen = first, 0
        while cluster is not None and (limit is None or seen < limit):
            if cluster < 2 or cluster >= self.clusters + 2:
                raise self._bad(f"cluster {cluster} is outside the file system")
            room = self.clusters + 1 - cluster if limit is None else min(limit - seen - 1, self.clusters + 1 - cluster)
            length = 1 + self._contiguous(cluster, room)
            seen += length
            if seen > self.clusters:
                raise self._bad("cluster chain loops")
            if runs and runs[-1][0] + runs[-1][1] == cluster:
                runs[-1] = (runs[-1][0], runs[-1][1] + length)
            else:
                runs.append((cluster, length))
            cluster = self._next(cluster + length - 1)
        return runs

    def _chain_bytes(self, first: int, size: int | None) -> bytearray:
        limit = None if size is None else -(-size // self.cluster_size)
        runs = self._runs(first, limit)
        have = sum(n for _, n in runs) * self.cluster_size
        if size is not None and have < size:
            raise self._bad(f"file of {size} bytes has a cluster chain of only {have} bytes")
        buf = bytearray(have)
        view = memoryview(buf)
        pos = 0
        for start, count in runs:
            length = count * self.cluster_size
            self._f.seek(self.offset + self.data_start + (start - 2) * self.cluster_size)
            if self._f.readinto(view[pos:pos + length]) != length:
                raise self._bad("truncated FAT file system (cluster past the end of the image)")
            pos += length
        del view
        if size is not None:
            del buf[size:]
        return buf  # a bytearray: no copy of a 70 MB UKI

    def directory_bytes(self, cluster: int = 0) -> bytes:
        """The raw entry table of the directory starting at `cluster` (0: the root)."""
        if cluster == 0:
            if self.root_fixed is None:
                return self._chain_bytes(self.root_cluster, None)
            return self._read(*self.root_fixed)
        return self._chain_bytes(cluster, None)

    def listdir(self, cluster: int = 0) -> list[Entry]:
        """Entries of the directory starting at `cluster` (0: the root), without '.' and '..'."""
        raw = self.directory_bytes(cluster)
        out: list[Entry] = []
        lfn: dict[int, str] = {}
        lfn_sum = None
        for i in range(0, len(raw) - 31, 32):
            e = raw[i:i + 32]
            if e[0] == 0:
                break
            if e[0] == 0xE5:
                lfn, lfn_sum = {}, None
                continue
            attr = e[11]
            if attr & 0x3F == ATTR_LFN:
                seq = e[0] & 0x1F
                if e[0] & 0x40:
                    lfn, lfn_sum = {}, e[13]
                part = (e[1:11] + e[14:26] + e[28:32]).decode("utf-16-le", errors="replace")
                lfn[seq] = part.split("\0", 1)[0]
                continue
            if attr & ATTR_VOLUME:
                lfn, lfn_sum = {}, None
                continue
            name = _short_name(e[:13])
            if lfn and lfn_sum == _lfn_checksum(e[:11]):
                name = "".join(lfn[k] for k in sorted(lfn)).rstrip("\uffff")
            lfn, lfn_sum = {}, None
            if name in (".", ".."):
                continue
            hi, lo = struct.unpack_from("<H", e, 20)[0], struct.unpack_from("<H", e, 26)[0]
            first = hi << 16 | lo if self.kind == 32 else lo
            out.append(Entry(name, bool(attr & ATTR_DIR), first, struct.unpack_from("<I", e, 28)[0]))
        return out

    def directories(self) -> dict[str, int]:
        """{path: first cluster} of every directory, the root as "/" (cluster 0)."""
        found: dict[str, int] = {}

        def visit(cluster: int, path: str, depth: int) -> None:
            if depth > 32:
                raise self._bad("directories nested too deep (a loop?)")
            found[path or "/"] = cluster
            for e in self.listdir(cluster):
                if e.is_dir:
                    visit(e.cluster, f"{path}/{e.name}", depth + 1)

        visit(0, "", 0)
        return found

    def walk(self) -> list[str]:
        """Every file (not directory) as an absolute path like '/EFI/BOOT/BOOTX64.EFI', sorted."""
        return sorted(f"{path.rstrip('/')}/{e.name}" for path, cluster in self.directories().items()
                      for e in self.listdir(cluster) if not e.is_dir)

    def lookup(self, path: str) -> Entry | None:
        cluster, entry = 0, None
        for part in [p for p in path.split("/") if p]:
            if entry is not None and not entry.is_dir:
                return None
            found = [e for e in self.listdir(cluster) if e.name.upper() == part.upper()]
            if not found:
                return None
            entry = found[0]
            cluster = entry.cluster
        return entry

    def read(self, path: str) -> bytes | bytearray:
        """A file's bytes; BadInput if it is missing or a directory."""
        e = self.lookup(path)
        if e is None or e.is_dir:
            raise BadInput(self.where, f"no file {path} on the FAT file system",
                           "the ESP must hold the UKI at /EFI/BOOT/BOOTX64.EFI")
        if e.size == 0:
            return b""
        return self._chain_bytes(e.cluster, e.size)


def open_esp(disk: Path) -> FatFs:
    """The one EFI System Partition of a GPT disk image."""
    table = gpt.read_table(Path(disk))
    esps = table.by_type(gpt.ESP_TYPE)
    if len(esps) != 1:
        raise BadInput(str(disk), f"expected one EFI System Partition, found {len(esps)}",
                       "is this the OS disk image (os_disk.raw)?")
    p = esps[0]
    if p.offset + p.size > Path(disk).stat().st_size:
        raise BadInput(str(disk), f"ESP (partition {p.number}) extends past the end of the image (truncated?)")
    return FatFs(Path(disk), p.offset, p.size, f"{disk} (ESP, partition {p.number})")
