"""Fixed VHD: the raw disk padded to a 1 MiB multiple plus a 512-byte footer (VHD spec, "Hard
Disk Footer Format"). Fields match what `qemu-img convert -O vpc -o subformat=fixed,force_size`
writes, so Azure accepts it the same way; timestamp and unique id are ours, so it is reproducible.
"""

from __future__ import annotations

import hashlib
import os
import struct
from pathlib import Path

from ...errors import BadInput

MiB = 1 << 20
FOOTER_SIZE = 512
VHD_EPOCH = 946684800  # 2000-01-01T00:00:00Z, the VHD timestamp origin
# force_size: qemu writes the maximum CHS geometry and a creator app of "qem2", which tells
# readers that current_size (not CHS) is the disk size.
_FORCE_SIZE_CHS = (65535, 16, 255)
_FOOTER = struct.Struct(">8sIIQI4sHH4sQQHBBII16sB427s")


# Azure's limits for an uploaded managed disk (`uploadSizeBytes` = VHD size): at least 20 MiB + the
# 512-byte footer, at most 32 TiB + 512, and the data part a whole number of MiB.
MIN_DATA_SIZE = 20 * MiB
MAX_DATA_SIZE = 32 * (1 << 40)


def padded_size(raw_size: int) -> int:
    """The data size Azure takes: a multiple of 1 MiB and at least 20 MiB (small disks are padded
    with zeros; the GPT does not change, so nothing measured does)."""
    size = max(-(-raw_size // MiB) * MiB, MIN_DATA_SIZE)
    if size > MAX_DATA_SIZE:
        raise BadInput("disk", f"{raw_size} bytes is more than Azure's 32 TiB limit for a managed disk")
    return size


def unique_id(disk_sha256: str) -> bytes:
    """A UUID-shaped id derived from the disk digest (version 8 and variant bits set)."""
    b = bytearray(hashlib.sha256(b"mithril-vhd-id\0" + bytes.fromhex(disk_sha256)).digest()[:16])
    b[6] = (b[6] & 0x0F) | 0x80
    b[8] = (b[8] & 0x3F) | 0x80
    return bytes(b)


def _checksum(data: bytes) -> int:
    return ~sum(data) & 0xFFFFFFFF


def footer(size: int, timestamp: int, uid: bytes) -> bytes:
    """The 512-byte footer of a fixed VHD whose data part is `size` bytes.

    timestamp is Unix time (converted to the VHD epoch), uid the 16-byte unique id."""
    if size % 512 or size <= 0:
        raise ValueError(f"VHD size {size} is not a positive multiple of 512")
    if len(uid) != 16:
        raise ValueError("VHD unique id must be 16 bytes")
    cyls, heads, secs = _FORCE_SIZE_CHS
    fields = [
        b"conectix", 0x2, 0x00010000, 0xFFFFFFFFFFFFFFFF,  # cookie, features, version, data offset (fixed)
        (timestamp - VHD_EPOCH) & 0xFFFFFFFF, b"qem2", 5, 3, b"Wi2k",  # creator app/version/host OS
        size, size, cyls, heads, secs, 2,  # original and current size, CHS, disk type fixed
        0, uid, 0, b"",  # checksum (filled below), unique id, saved state, reserved
    ]
    raw = _FOOTER.pack(*fields)
    fields[15] = _checksum(raw)
    return _FOOTER.pack(*fields)


def parse_footer(data: bytes) -> dict:
    """The footer's fields (for tests and checks); raises ValueError if it is not a VHD footer."""
    if len(data) != FOOTER_SIZE or data[:8] != b"conectix":
        raise ValueError("not a VHD footer")
    f = _FOOTER.unpack(data)
    zeroed = data[:64] + b"\0\0\0\0" + data[68:]
    if _checksum(zeroed) != f[15]:
        raise ValueError("VHD footer checksum mismatch")
    return {"timestamp": f[4] + VHD_EPOCH, "creator": f[5].decode(), "size": f[10], "disk_type": f[14],
            "geometry": f[11:14], "unique_id": f[16]}


def check_timestamp(source_date_epoch: int, where: str = "source_date_epoch") -> None:
    """The footer holds seconds since 2000-01-01 in 32 bits: anything else would wrap silently."""
    if not VHD_EPOCH <= source_date_epoch <= VHD_EPOCH + 0xFFFFFFFF:
        raise BadInput(where, f"{source_date_epoch} is outside what a VHD footer can hold "
                              f"({VHD_EPOCH}..{VHD_EPOCH + 0xFFFFFFFF}, 2000-01-01 to 2136-02-07)")


def disk_footer(disk: Path, disk_sha256: str, source_date_epoch: int) -> tuple[int, bytes]:
    """(padded data size, footer) for a raw disk."""
    check_timestamp(source_date_epoch)
    raw = disk.stat().st_size
    if raw == 0:
        raise BadInput(str(disk), "the disk image is empty", "build it first or pass the right path")
    size = padded_size(raw)
    return size, footer(size, source_date_epoch, unique_id(disk_sha256))


def data_extents(path: Path) -> list[tuple[int, int]]:
    """(offset, length) of the parts of a file that hold data (SEEK_DATA/SEEK_HOLE)."""
    size = path.stat().st_size
    out: list[tuple[int, int]] = []
    fd = os.open(path, os.O_RDONLY)
    try:
        pos = 0
        while pos < size:
            try:
                start = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError:  # ENXIO: no data after pos
                break
            end = os.lseek(fd, start, os.SEEK_HOLE)
            out.append((start, end - start))
            pos = end
    finally:
        os.close(fd)
    return out


def check_paths(disk: Path, out: Path) -> None:
    """A readable, non-empty disk and an output that is neither the disk nor a folder, in a folder
    that exists (nothing is created on the way)."""
    if not disk.is_file():
        raise BadInput(str(disk), "disk image not found" if not disk.exists() else "not a regular file",
                       "build it first or pass the right path")
    if disk.stat().st_size == 0:
        raise BadInput(str(disk), "the disk image is empty", "build it first or pass the right path")
    if out.is_dir():
        raise BadInput(str(out), "is a folder", "pass the VHD file to write with -o")
    if not out.parent.is_dir():
        raise BadInput(str(out), f"folder {out.parent} does not exist", "create it first")
    if out.resolve() == disk.resolve() or out.exists() and os.path.samefile(out, disk):
        raise BadInput(str(out), "is the input disk itself", "write the VHD to another file")


def write_vhd(disk: Path, out: Path, disk_sha256: str, source_date_epoch: int) -> dict:
    """Write a sparse fixed VHD of `disk` to `out` (atomically): only data extents are copied."""
    check_paths(disk, out)
    size, foot = disk_footer(disk, disk_sha256, source_date_epoch)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        with open(disk, "rb") as src, open(tmp, "wb") as dst:
            for off, length in data_extents(disk):
                src.seek(off)
                dst.seek(off)
                while length:
                    buf = src.read(min(length, 4 * MiB))
                    dst.write(buf)
                    length -= len(buf)
            dst.truncate(size)
            dst.seek(size)
            dst.write(foot)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return {"vhd": out.name, "data_size": size, "vhd_size": size + FOOTER_SIZE, "disk_sha256": disk_sha256}
