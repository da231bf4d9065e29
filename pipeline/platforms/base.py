"""What every platform package (pipeline/platforms/<module>/) provides, as its PLATFORM."""

from __future__ import annotations

from mithril_client.platforms import PLATFORMS


class Platform:
    """What the build, the checks of mithril.yaml and the deploy commands need to know about a
    platform. The defaults fit a platform with no cloud around it. Its firmware facts are project
    data: `firmware.load(root, name)` (measurements/platforms/<name>.yaml)."""

    azure = False  # the image talks to Azure's resolver and metadata service (firewall rules)
    boots_here = False  # `boot` and `record-platform` can start it on this machine
    gpu_passthrough = True  # a GPU profile's VMs get the GPU: releases pin the driver RIM, clients demand its evidence

    def __init__(self, module: str):
        folder = module.rpartition(".")[2]
        rows = [name for name, m in PLATFORMS.items() if m == folder]
        if not rows:
            raise ValueError(f"pipeline/platforms/{folder}/ is no row of mithril_client.platforms.PLATFORMS")
        self.name = rows[0]

    def template_vars(self) -> dict:
        """What the OS image's templates (mkosi/, the firewall rules) know of the platform."""
        return {"platform": self.name, "azure": self.azure}

    def azure_defaults(self) -> dict:
        """Values of the `azure` section that follow from the platform when a profile leaves them out."""
        return {}

    def networks(self, config, profile, at) -> list[tuple[str, str]]:
        """(what, IPv4 network) of the address ranges the platform's network takes: the k3s ranges
        must not overlap them. `at(section, field)` names a field in errors (ValueError)."""
        return []

    def check(self, config, profile, at) -> None:
        """Reject settings the platform cannot run, with one line naming the field (ValueError)."""

    def settings(self, profile) -> dict:
        """The platform's resolved sections of the profile, as `plan` and `render` show them."""
        return {}
