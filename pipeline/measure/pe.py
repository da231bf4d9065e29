"""PE images (the UKI and the kernel inside it): sections, Authenticode SHA-256, the
systemd-stub version.

Authenticode follows Microsoft's "Windows Authenticode Portable Executable Signature Format"
(and EDK2's Tcg2MeasurePeImage, which is what puts it into PCR 4): hash the headers without
the checksum and the certificate-table directory entry, then every section's raw data in file
order, then any data after the last section except the attribute certificate table.
"""

from __future__ import annotations

import hashlib
import re
import struct
from dataclasses import dataclass

import pefile

from ..errors import BadInput

CERT_DIR = 4  # IMAGE_DIRECTORY_ENTRY_SECURITY


@dataclass(frozen=True)
class Section:
    name: str
    virtual_address: int
    virtual_size: int
    raw_offset: int
    raw_size: int


class PeImage:
    """A parsed PE file held in memory. Raises BadInput for anything that is not a sane PE."""

    def __init__(self, data: bytes | bytearray, where: str):
        self.data = data
        self.where = where
        try:
            pe = pefile.PE(data=data, fast_load=True)
        except pefile.PEFormatError as e:
            raise BadInput(where, f"not a PE image: {e.value}", "expected an EFI application (UKI or kernel)") from None
        self.magic = pe.OPTIONAL_HEADER.Magic
        if self.magic not in (0x10B, 0x20B):
            raise BadInput(where, f"unknown PE optional header magic {self.magic:#x}")
        opt = pe.OPTIONAL_HEADER.get_file_offset()
        self._checksum_at = opt + 64
        self._cert_dir_at = opt + (96 if self.magic == 0x10B else 112) + CERT_DIR * 8
        self.size_of_headers = pe.OPTIONAL_HEADER.SizeOfHeaders
        dirs = pe.OPTIONAL_HEADER.NumberOfRvaAndSizes
        self.cert_offset, self.cert_size = (struct.unpack_from("<II", data, self._cert_dir_at)
                                            if dirs > CERT_DIR else (0, 0))
        if self.size_of_headers > len(data) or self._cert_dir_at + 8 > self.size_of_headers:
            raise BadInput(where, "truncated PE headers")
        sections = []
        for s in pe.sections:
            name = s.Name.rstrip(b"\0").decode("latin-1")
            if s.SizeOfRawData and s.PointerToRawData + s.SizeOfRawData > len(data):
                raise BadInput(where, f"section {name} is truncated: it ends at byte "
                               f"{s.PointerToRawData + s.SizeOfRawData} of a {len(data)}-byte file",
                               "the file was cut short; rebuild it")
            sections.append(Section(name, s.VirtualAddress, s.Misc_VirtualSize, s.PointerToRawData, s.SizeOfRawData))
        if self.cert_size and self.cert_offset + self.cert_size > len(data):
            raise BadInput(where, "attribute certificate table runs past the end of the file")
        self.sections = tuple(sections)
        self._digests: dict[str, bytes] = {}  # section name (or "authenticode") -> sha256

    def section(self, name: str) -> Section | None:
        found = [s for s in self.sections if s.name == name]
        return found[0] if found else None

    def section_data(self, name: str) -> bytes | memoryview | None:
        """A section as the loader maps it: VirtualSize bytes, zero-filled past the raw data
        (a view into the file when no filling is needed: UKIs are large)."""
        s = self.section(name)
        if s is None:
            return None
        raw = memoryview(self.data)[s.raw_offset:s.raw_offset + min(s.raw_size, s.virtual_size)]
        return raw if len(raw) == s.virtual_size else bytes(raw) + bytes(s.virtual_size - len(raw))

    def section_sha256(self, name: str) -> bytes:
        """sha256 of section_data(name), computed once (PCR 9 and 11 both hash the initrd)."""
        if name not in self._digests:
            self._digests[name] = hashlib.sha256(self.section_data(name) or b"").digest()
        return self._digests[name]

    def authenticode(self) -> bytes:
        """The Authenticode SHA-256 digest (as firmware measures it into PCR 4)."""
        if "authenticode" not in self._digests:
            self._digests["authenticode"] = self._authenticode()
        return self._digests["authenticode"]

    def _authenticode(self) -> bytes:
        d = memoryview(self.data)
        h = hashlib.sha256()
        h.update(d[:self._checksum_at])
        h.update(d[self._checksum_at + 4:self._cert_dir_at])
        h.update(d[self._cert_dir_at + 8:self.size_of_headers])
        hashed = self.size_of_headers
        for s in sorted((s for s in self.sections if s.raw_size), key=lambda s: s.raw_offset):
            h.update(d[s.raw_offset:s.raw_offset + s.raw_size])
            hashed += s.raw_size
        if len(self.data) > hashed:
            extra = len(self.data) - self.cert_size - hashed
            if extra > 0:
                h.update(d[hashed:hashed + extra])
        return h.digest()


def stub_version(uki: PeImage) -> tuple[int, str]:
    """(major, full version) of the systemd-stub a UKI was built from, from its .sdmagic
    section ("#### LoaderInfo: systemd-stub 252.39-1~deb12u2 ####")."""
    magic = uki.section_data(".sdmagic")
    if magic is None:
        raise BadInput(uki.where, "no .sdmagic section: not a UKI built on systemd-stub",
                       "build the UKI with ukify from systemd-boot-efi's linuxx64.efi.stub")
    magic = bytes(magic)
    m = re.search(rb"systemd-stub ((\d+)[^ \0#]*)", magic)
    if not m:
        raise BadInput(uki.where, f".sdmagic does not name a systemd-stub version: {magic.rstrip(bytes(1))[:80]!r}")
    return int(m.group(2)), m.group(1).decode()


def kernel(uki: PeImage) -> PeImage:
    """The kernel PE inside the UKI's .linux section (the bytes systemd-stub hands to LoadImage)."""
    data = uki.section_data(".linux")
    if not data:
        raise BadInput(uki.where, "no .linux section: not a UKI", "build the UKI with ukify")
    return PeImage(bytes(data), f"{uki.where} (.linux)")
