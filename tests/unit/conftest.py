"""Session fixtures for tests/unit (built once per test run)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests import ukifixture


@pytest.fixture(scope="session")
def uki_parts(tmp_path_factory) -> ukifixture.Parts:
    """Debian's cloud kernel, the bookworm 252 and backports 254 systemd-stubs, a fixed initrd."""
    return ukifixture.parts(tmp_path_factory.mktemp("uki"))


@pytest.fixture(scope="session")
def uki252(uki_parts) -> Path:
    """A UKI built with ukify on the bookworm systemd-stub 252 (what the OS image uses)."""
    return ukifixture.build_uki(uki_parts, uki_parts.work / "uki252.efi", uki_parts.stub252)


@pytest.fixture(scope="session")
def uki254(uki_parts) -> Path:
    """The same UKI on the systemd-stub 254 (measures .uname and .sbat too)."""
    return ukifixture.build_uki(uki_parts, uki_parts.work / "uki254.efi", uki_parts.stub254)


@pytest.fixture(scope="session")
def os_disk252(uki252, tmp_path_factory) -> Path:
    """A GPT disk image whose FAT32 ESP holds only uki252 at /EFI/BOOT/BOOTX64.EFI."""
    return ukifixture.os_disk(tmp_path_factory.mktemp("disk"), uki252.read_bytes())
