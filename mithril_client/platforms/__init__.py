"""AK trust per platform: does the AK that signed the quote belong to a genuine (virtual) TPM?

One module per platform, each with `check_ak(evidence, ak_key, ...) -> list[Row]` whose row named
`ak` is the verdict. `check_ak` here picks the module from `evidence.platform`.
"""

from __future__ import annotations

from datetime import datetime

from ..measurements import Row
from . import azure_cvm, azure_trusted_launch
from ._x509 import evidence_arg


def check_ak(evidence, ak_key, *, now: datetime | None = None, snp_policy: azure_cvm.SnpPolicy | None = None,
             fetch: azure_trusted_launch.Fetch | None = None) -> list[Row]:
    evidence = evidence_arg(evidence)
    if evidence.platform == "azure-trusted-launch":
        return azure_trusted_launch.check_ak(evidence, ak_key, now=now, fetch=fetch)
    if evidence.platform == "azure-cvm":
        return azure_cvm.check_ak(evidence, ak_key, now=now, policy=snp_policy)
    # qemu's AK is tied to its certified EK by credential activation (POST /attestation/activate)
    return [Row("ak", f"AK trust for platform {evidence.platform!r}", "no certificate-based check for this platform",
                "enforce", "MISMATCH")]
