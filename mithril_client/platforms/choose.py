"""The client's AK check, chosen by the evidence's platform: does the AK that signed the quote
belong to a genuine (virtual) TPM? Each platform's module (a row of PLATFORMS) has
`validate(evidence, ak: TpmPublic, inputs: AkInputs) -> list[Row]`; the row named `ak` is the verdict."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from types import ModuleType

from ..certs import evidence_arg
from ..measurements import Row
from ..tpm2 import TpmPublic
from . import PLATFORMS


def validator(name: str) -> ModuleType:
    """The client's module of platform `name` (mithril_client/platforms/<module>.py); KeyError
    for a name that is no row."""
    return importlib.import_module(f"{__package__}.{PLATFORMS[name]}")


@dataclass(frozen=True)
class AkInputs:
    """What a caller may give the AK check; each platform's `validate` uses what it needs."""

    ek_roots: bytes | None = None  # qemu: the per-boot swtpm EK CA
    activate: Callable[[bytes, bytes], bytes] | None = None  # qemu: the credential activation round trip
    now: datetime | None = None
    fetch: Callable[[str], bytes] | None = None  # azure-trusted-launch: AIA issuers
    fetch_budget: float | None = None  # azure-trusted-launch: seconds for every fetch together
    snp_policy: object = None  # azure-cvm: azure_cvm.SnpPolicy


def check_ak(evidence, ak: TpmPublic, *, ek_roots: bytes | None = None, now: datetime | None = None,
             snp_policy=None, fetch: Callable[[str], bytes] | None = None, fetch_budget: float | None = None,
             activate: Callable[[bytes, bytes], bytes] | None = None) -> list[Row]:
    """`ek_roots`, `activate`: qemu (the per-boot swtpm EK CA; the credential activation round
    trip). `fetch`, `fetch_budget`: Azure Trusted Launch AIA issuers. `snp_policy`: Azure CVM
    (azure_cvm.SnpPolicy)."""
    evidence = evidence_arg(evidence)
    if evidence.platform not in PLATFORMS:
        return [Row("ak", "AK tied to a genuine TPM", f"no AK check for platform {evidence.platform!r}", "enforce",
                    "MISMATCH")]
    inputs = AkInputs(ek_roots=ek_roots, activate=activate, now=now, fetch=fetch, fetch_budget=fetch_budget,
                      snp_policy=snp_policy)
    return validator(evidence.platform).validate(evidence, ak, inputs)
