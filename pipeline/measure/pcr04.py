"""PCR 4 (UEFI boot manager code): the firmware's own events before the first application
(per platform, see measurements/platforms/*.yaml), then the Authenticode SHA-256 of the UKI
(loaded by the boot manager) and of the kernel PE that systemd-stub hands to LoadImage.
"""

from __future__ import annotations

from dataclasses import dataclass

from .pcr import Simulator
from .pe import PeImage

PCR = 4


@dataclass(frozen=True)
class FirmwareEvent:
    type: str
    description: str
    digest: bytes


def predict(sim: Simulator, firmware: list[FirmwareEvent], uki: PeImage, kernel: PeImage) -> bytes:
    for e in firmware:
        sim.extend(PCR, e.digest, e.type, e.description)
    sim.extend(PCR, uki.authenticode(), "EV_EFI_BOOT_SERVICES_APPLICATION",
               "Authenticode SHA-256 of the UKI (/EFI/BOOT/BOOTX64.EFI)")
    sim.extend(PCR, kernel.authenticode(), "EV_EFI_BOOT_SERVICES_APPLICATION",
               "Authenticode SHA-256 of the kernel in the UKI's .linux section")
    return sim.value(PCR)
