"""Azure Confidential VM: AMD SEV-SNP memory encryption, the vTPM in the paravisor."""

from __future__ import annotations

from ..azure import AzurePlatform


class AzureCvm(AzurePlatform):
    security_type = "ConfidentialVM"

    def check_vm_size(self, vm_size: str, confidential: bool, at) -> None:
        if not confidential:
            raise ValueError(f"{at('azure', 'vm_size')}: {vm_size} is not a confidential (SEV-SNP) size; "
                             f"platform {self.name} needs DCasv5/ECasv5 or NCCadsH100v5")


PLATFORM = AzureCvm(__name__)
