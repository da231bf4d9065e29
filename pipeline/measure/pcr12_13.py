"""PCR 12 and 13 (systemd-stub: command-line overrides and credentials into 12, system
extensions into 13): predicted to stay zero. That holds only when the stub finds nothing to
measure, which is checked on the image: the ESP holds the UKI and nothing else (no
/loader/credentials, no *.extra.d, no sysext images, no boot loader entries). What the boot
entry passes as LoadOptions (an override of the command line, measured into PCR 12 when Secure
Boot is off) cannot be seen in the image: the platform, booting the removable-media path, must
pass none; the QEMU boot check confirms it.
"""

from __future__ import annotations

from ..errors import BadInput
from .pcr import Simulator

PCRS = (12, 13)
UKI_PATH = "/EFI/BOOT/BOOTX64.EFI"


def check_esp(files: list[str], where: str) -> None:
    """BadInput unless the ESP's only file is the UKI at the removable-media path."""
    extra = [f for f in files if f.upper() != UKI_PATH]
    if len(files) == len(extra):
        raise BadInput(where, f"no UKI at {UKI_PATH} (files: {', '.join(files[:5]) or 'none'})",
                       "is this the OS disk image (os_disk.raw)?")
    if extra:
        raise BadInput(where, f"the ESP holds {', '.join(extra[:5])} besides the UKI; systemd-stub would measure "
                       "credentials or system extensions into PCR 12/13", "keep only the UKI on the ESP")


def predict(sim: Simulator, esp_files: list[str], where: str) -> dict[int, bytes]:
    check_esp(esp_files, where)
    for pcr in PCRS:
        sim.touch(pcr)
    return {pcr: sim.value(pcr) for pcr in PCRS}
