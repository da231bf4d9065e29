"""Azure Trusted Launch: the vTPM's persistent AK and its certificate from Azure's vTPM CA."""

from __future__ import annotations

from ..tpm import Key, Tpm
from .base import Issuer, nv_cert_pem

AZURE_AK_HANDLE = 0x81000003
NV_AZURE_AK_CERT = 0x01C101D0


class AzureTrustedLaunch(Issuer):
    def ak(self, tpm: Tpm) -> Key:
        return tpm.read_public(AZURE_AK_HANDLE)

    def read(self, tpm: Tpm) -> dict[str, str]:
        return {"ak_cert": nv_cert_pem(tpm, NV_AZURE_AK_CERT)}


ISSUER = AzureTrustedLaunch
