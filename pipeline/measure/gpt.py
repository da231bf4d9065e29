"""Read a GPT partition table straight from a disk image file."""

from __future__ import annotations

import hashlib
import struct
import uuid
import zlib
from dataclasses import dataclass
from pathlib import Path

from ..errors import BadInput

SECTOR = 512
ESP_TYPE = uuid.UUID("c12a7328-f81f-11d2-ba4b-00a0c93ec93b")


@dataclass(frozen=True)
class Partition:
    number: int  # 1-based
    type_uuid: uuid.UUID
    uuid: uuid.UUID
    first_lba: int
    last_lba: int
    label: str

    @property
    def offset(self) -> int:
        return self.first_lba * SECTOR

    @property
    def size(self) -> int:
        return (self.last_lba - self.first_lba + 1) * SECTOR


@dataclass(frozen=True)
class Table:
    disk_uuid: uuid.UUID
    partitions: tuple[Partition, ...]

    def by_label(self, label: str, where: str) -> Partition:
        found = [p for p in self.partitions if p.label == label]
        if len(found) != 1:
            raise BadInput(where, f"expected one partition labelled {label!r}, found {len(found)}",
                           "is this the right disk image?")
        return found[0]

    def by_type(self, type_uuid: uuid.UUID) -> list[Partition]:
        return [p for p in self.partitions if p.type_uuid == type_uuid]


def partition_sha256(path: Path, p: Partition, length: int | None = None) -> str:
    """sha256 of partition p of a disk image file, or of its first `length` bytes (streamed; a
    truncated image hashes what is there)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        f.seek(p.offset)
        remaining = p.size if length is None else length
        while remaining and (chunk := f.read(min(remaining, 4 << 20))):
            h.update(chunk)
            remaining -= len(chunk)
    return h.hexdigest()


def read_table(path: Path) -> Table:
    """Parse the primary GPT of a disk image (512-byte sectors); BadInput if it is not one."""
    where = str(path)
    try:
        with open(path, "rb") as f:
            f.seek(SECTOR)
            header = f.read(92)
            if len(header) < 92 or header[:8] != b"EFI PART":
                raise BadInput(where, "not a GPT disk image (no 'EFI PART' header at LBA 1)")
            (hdr_size, hdr_crc) = struct.unpack_from("<II", header, 12)
            check = bytearray(header[:hdr_size] if hdr_size <= 92 else header)
            check[16:20] = b"\0\0\0\0"
            if hdr_size == 92 and zlib.crc32(check) != hdr_crc:
                raise BadInput(where, "GPT header checksum is wrong (corrupt or truncated disk image)")
            disk_guid = uuid.UUID(bytes_le=header[56:72])
            entries_lba, count, entry_size, entries_crc = struct.unpack_from("<QIII", header, 72)
            if entry_size < 128 or count > 1024:
                raise BadInput(where, f"implausible GPT entry table ({count} entries of {entry_size} bytes)")
            f.seek(entries_lba * SECTOR)
            raw = f.read(count * entry_size)
    except OSError as e:
        raise BadInput(where, f"cannot read disk image: {e.strerror}") from None
    if len(raw) != count * entry_size or zlib.crc32(raw) != entries_crc:
        raise BadInput(where, "GPT partition entries are truncated or their checksum is wrong")
    parts = []
    for i in range(count):
        e = raw[i * entry_size:(i + 1) * entry_size]
        if e[:16] == bytes(16):
            continue
        first, last = struct.unpack_from("<QQ", e, 32)
        label = e[56:128].decode("utf-16-le").split("\0", 1)[0]
        parts.append(Partition(i + 1, uuid.UUID(bytes_le=e[:16]), uuid.UUID(bytes_le=e[16:32]),
                               first, last, label))
    return Table(disk_guid, tuple(parts))
