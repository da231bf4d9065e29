"""Azure confidential VM (SEV-SNP): as Trusted Launch, plus the HCL report (the SNP report whose
report_data binds the AK) and the VCEK chain from IMDS THIM, cached per TCB (imds.py)."""

from __future__ import annotations

from .. import imds
from ..tpm import Tpm, TpmError
from .azure_trusted_launch import AzureTrustedLaunch
from .base import TpmSession, b64

NV_AZURE_HCL_REPORT = 0x01400001  # read as the HCL wrote it at boot: docs/evidence.md, "HCL report"
HCL_REPORTED_TCB = slice(32 + 0x180, 32 + 0x188)  # REPORTED_TCB of the SNP report after the 32-byte HCL header


class AzureCvm(AzureTrustedLaunch):
    def __init__(self, cfg, log):
        super().__init__(cfg, log)
        self.vcek = imds.VcekCache(cfg.thim_url, log=log)

    def warm(self, session: TpmSession) -> None:
        """Fetch the VCEK chain before the first client asks (the first request tries again)."""
        try:
            with session() as tpm:
                hcl = tpm.nv_read(NV_AZURE_HCL_REPORT)
            self.vcek.get(hcl[HCL_REPORTED_TCB])
        except (TpmError, imds.ImdsError) as e:
            self.log(f"fetching the VCEK chain at start: {e}")

    def read(self, tpm: Tpm) -> tuple[dict[str, str], bytes]:
        found = super().read(tpm)
        hcl = tpm.nv_read(NV_AZURE_HCL_REPORT)
        return {**found, "hcl_report": b64(hcl)}, hcl

    def fields(self, held) -> dict[str, str]:
        found, hcl = held  # cached per TCB, so IMDS is rarely asked
        return {**found, "vcek_chain": self.vcek.get(hcl[HCL_REPORTED_TCB]).decode()}


ISSUER = AzureCvm
