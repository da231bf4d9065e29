"""What the Azure platforms (azure_trusted_launch, azure_cvm) share: the checks of the `azure`
section, the firewall's Azure addresses, and the deployment code (vhd.py, upload.py, deploy.py)."""

from __future__ import annotations

import ipaddress
import re

from ..base import Platform

DNS, IMDS = "168.63.129.16", "169.254.169.254"  # Azure's resolver (wire server) and metadata service
# What Azure documents for the sizes we name (learn.microsoft.com, VM size series pages): SEV-SNP
# confidential families, and the GPUs per size of the GPU families used here.
CONFIDENTIAL_SIZE = re.compile(r"Standard_(DC|EC)\d+a\w*_v[56]|Standard_NCC\d+ads_H100_v5", re.ASCII)  # fullmatch
GPU_SIZE = re.compile(r"^Standard_N[CDV]")
GPUS = {"Standard_NC24ads_A100_v4": 1, "Standard_NC48ads_A100_v4": 2, "Standard_NC96ads_A100_v4": 4,
        "Standard_NCC40ads_H100_v5": 1}


class AzurePlatform(Platform):
    azure = True
    security_type: str  # the VM's securityType

    def template_vars(self) -> dict:
        return {**super().template_vars(), "azure_dns": DNS, "imds": IMDS}

    def azure_defaults(self) -> dict:
        return {"security_type": self.security_type}

    def networks(self, config, profile, at) -> list[tuple[str, str]]:
        az = profile.azure
        vnet, subnet = ipaddress.IPv4Network(az.vnet_prefix), ipaddress.IPv4Network(az.subnet_prefix)
        if not subnet.subnet_of(vnet):
            raise ValueError(f"{at('azure', 'subnet_prefix')}: {subnet} is not inside vnet_prefix {vnet}")
        return [(at("azure", "vnet_prefix"), az.vnet_prefix)]

    def check(self, config, profile, at) -> None:
        az = profile.azure
        if az.security_type != self.security_type:
            raise ValueError(f"{at('azure', 'security_type')}: {az.security_type}, but platform {self.name} "
                             f"is {self.security_type}; leave it out (it follows the platform)")
        if az.secure_boot:
            raise ValueError(f"{at('azure', 'secure_boot')}: the UKI is not signed, so Secure Boot would refuse "
                             "it; keep false")
        if not az.vtpm:
            raise ValueError(f"{at('azure', 'vtpm')}: without the vTPM there is nothing to attest; keep true")
        self.check_vm_size(az.vm_size, bool(CONFIDENTIAL_SIZE.fullmatch(az.vm_size)), at)
        if profile.os.nvidia and not GPU_SIZE.match(az.vm_size):
            raise ValueError(f"{at('azure', 'vm_size')}: {az.vm_size} has no GPU, but the profile needs one "
                             "(os.nvidia)")
        model = config.models[profile.model] if profile.model else None
        if model and az.vm_size in GPUS and model.tensor_parallel > GPUS[az.vm_size]:
            raise ValueError(f"models.{profile.model}.tensor_parallel: {model.tensor_parallel}, but "
                             f"{az.vm_size} has {GPUS[az.vm_size]} GPU(s)")

    def check_vm_size(self, vm_size: str, confidential: bool, at) -> None:
        """Is vm_size a size of this platform's kind (`confidential`: an SEV-SNP size)?"""

    def settings(self, profile) -> dict:
        return {"azure": profile.azure.model_dump(mode="json", exclude={"subscription_id", "tags"})}
