"""pipeline/platforms/: the platform packages and the one registry that chooses them."""

import pytest

from pipeline import config, platforms
from pipeline.platforms import firmware
from pipeline.project import REPO


def test_names_come_from_the_folders():
    folders = sorted(p.name.replace("_", "-") for p in (REPO / "pipeline" / "platforms").iterdir()
                     if (p / "__init__.py").is_file() and p.name != "azure")  # azure/: shared code
    assert platforms.names() == tuple(folders) == ("azure-cvm", "azure-trusted-launch", "qemu")
    assert config.PlatformName.__args__ == platforms.names()


@pytest.mark.parametrize("name", platforms.names())
def test_every_platform_has_its_firmware_facts(name):
    p = platforms.get(name)
    assert p.name == name and p.template_vars()["platform"] == name
    assert firmware.load(REPO, name).name == name


def test_azure_flags_and_defaults():
    assert platforms.get("qemu").template_vars() == {"platform": "qemu", "azure": False}
    for name, security in (("azure-cvm", "ConfidentialVM"), ("azure-trusted-launch", "TrustedLaunch")):
        p = platforms.get(name)
        assert p.template_vars()["azure"] and p.azure_defaults() == {"security_type": security}
