"""PCR 11 (systemd-stub): every UKI section the stub knows, present and non-empty, in the
stub's fixed order, as two extends each: sha256(name + NUL), then sha256(the section as
mapped: VirtualSize bytes). Then the boot phases systemd-pcrphase extends from userspace,
each sha256(word) — only those the image does not mask.

The section list depends on the stub version (read from the UKI's .sdmagic): systemd 252's
stub (Debian bookworm) knows .linux .osrel .cmdline .initrd .splash .dtb .pcrsig .pcrpkey;
253 added .uname and .sbat, 256 .ucode; .pcrsig is never measured (it signs the result).
"""

from __future__ import annotations

from ..errors import BadInput
from .pcr import Simulator
from .pe import PeImage

PCR = 11
MIN_STUB, MAX_STUB = 252, 256  # versions whose section lists are known here; 257 adds profiles

_V252 = (".linux", ".osrel", ".cmdline", ".initrd", ".splash", ".dtb", ".pcrpkey")
_V253 = (".linux", ".osrel", ".cmdline", ".initrd", ".splash", ".dtb", ".uname", ".sbat", ".pcrpkey")
_V256 = (".linux", ".osrel", ".cmdline", ".initrd", ".ucode", ".splash", ".dtb", ".uname", ".sbat", ".pcrpkey")


def measured_sections(stub_major: int, where: str = "UKI") -> tuple[str, ...]:
    """The sections a systemd-stub of this major version measures, in its order."""
    if not MIN_STUB <= stub_major <= MAX_STUB:
        raise BadInput(where, f"systemd-stub {stub_major} is not supported (known: {MIN_STUB}..{MAX_STUB})",
                       "build the UKI with a supported stub or teach pipeline/measure/pcr11.py its section list")
    return _V252 if stub_major == 252 else _V256 if stub_major >= 256 else _V253


def present(uki: PeImage, stub_major: int) -> list[str]:
    """The sections of this UKI that its stub measures, in order."""
    return [n for n in measured_sections(stub_major, uki.where) if (s := uki.section(n)) and s.virtual_size]


def predict(sim: Simulator, uki: PeImage, stub_major: int, phases: tuple[str, ...] = ()) -> bytes:
    for name in present(uki, stub_major):
        size = uki.section(name).virtual_size
        sim.measure(PCR, name.encode() + b"\0", "EV_IPL", f"systemd-stub {stub_major}: section name {name}")
        sim.extend(PCR, uki.section_sha256(name), "EV_IPL", f"systemd-stub {stub_major}: section {name} ({size} bytes)")
    for phase in phases:
        sim.measure(PCR, phase.encode(), "systemd-pcrphase", f"boot phase {phase!r}")
    sim.touch(PCR)
    return sim.value(PCR)
