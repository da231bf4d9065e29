"""QEMU q35 with OVMF and swtpm on this machine: `boot` (the PCR check) and `run` (boot.py)."""

from __future__ import annotations

from ..base import Platform

USER_NET = "10.0.2.0/24"  # QEMU's user-mode network (`run`, `boot`)


class Qemu(Platform):
    boots_here = True
    gpu_passthrough = False  # no GPU is passed through here (gpu-local: the GPU image booted under TCG)

    def networks(self, config, profile, at) -> list[tuple[str, str]]:
        return [("QEMU's user network", USER_NET)]


PLATFORM = Qemu(__name__)
