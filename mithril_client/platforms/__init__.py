"""AK trust per platform: does the AK that signed the quote belong to a genuine (virtual) TPM?

One module per platform, each with a `check_ak(...) -> list[Row]` whose row named `ak` is the
verdict; `check_ak` here picks the module from `evidence.platform`.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from ..certs import evidence_arg
from ..measurements import Row
from ..tpm2 import TpmPublic


def check_ak(evidence, ak: TpmPublic, *, ek_roots: bytes | None = None, now: datetime | None = None,
             snp_policy=None, fetch: Callable[[str], bytes] | None = None, fetch_budget: float | None = None,
             activate: Callable[[bytes, bytes], bytes] | None = None) -> list[Row]:
    """`ek_roots`, `activate`: qemu (the per-boot swtpm EK CA; the credential activation round
    trip). `fetch`: Azure Trusted Launch AIA issuers. `snp_policy`: Azure CVM (azure_cvm.SnpPolicy)."""
    evidence = evidence_arg(evidence)
    if evidence.platform == "qemu":
        from . import qemu

        return qemu.check_ak(evidence, ak, ek_roots=ek_roots, activate=activate, now=now)
    if evidence.platform == "azure-trusted-launch":
        from . import azure_trusted_launch

        budget = azure_trusted_launch.FETCH_BUDGET if fetch_budget is None else fetch_budget
        return azure_trusted_launch.check_ak(evidence, ak.key, now=now, fetch=fetch, fetch_budget=budget)
    if evidence.platform == "azure-cvm":
        from . import azure_cvm

        return azure_cvm.check_ak(evidence, ak.key, now=now, policy=snp_policy)
    return [Row("ak", "AK tied to a genuine TPM", f"no AK check for platform {evidence.platform!r}", "enforce",
                "MISMATCH")]
