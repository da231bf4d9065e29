"""Azure Trusted Launch: a Gen2 VM with measured boot and a vTPM, but no memory encryption."""

from __future__ import annotations

from ..azure import AzurePlatform


class AzureTrustedLaunch(AzurePlatform):
    security_type = "TrustedLaunch"

    def check_vm_size(self, vm_size: str, confidential: bool, at) -> None:
        if confidential:
            raise ValueError(f"{at('azure', 'vm_size')}: {vm_size} is a confidential VM size; use platform "
                             "azure-cvm")


PLATFORM = AzureTrustedLaunch(__name__)
