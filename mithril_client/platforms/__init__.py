"""The one list of platform names, and the AK-trust check that each platform's module makes.

A row of PLATFORMS is a platform: its name (the `platform:` of mithril.yaml, measurements.json
and the evidence) and the module name under which each side keeps that platform's code:

  mithril_client/platforms/<module>.py      the validator: does the AK belong to a genuine TPM?
  attestation_server/platforms/<module>.py  the issuer: the AK, and what ties it to hardware
  pipeline/platforms/<module>/              the build: checks of mithril.yaml, template variables,
                                            deployment (and measurements/platforms/<name>.yaml)

Each side finds its code with `importlib.import_module(f"{__name__}.{PLATFORMS[name]}")` in its
platforms/__init__.py (which is also how pipeline/modules.py sees that a stage uses the whole
folder); nothing else branches on a platform name.
Adding a platform is one row here and one module or folder per side
(tests/unit/test_platform_registry.py checks both directions). This module imports nothing of
the client at load time: the attestation server and evidence.py read the names from here.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from types import ModuleType

PLATFORMS: dict[str, str] = {  # name -> module (folder) name on every side
    "qemu": "qemu",
    "azure-trusted-launch": "azure_trusted_launch",
    "azure-cvm": "azure_cvm",
}
NAMES = tuple(PLATFORMS)


def validator(name: str) -> ModuleType:
    """The client's module of platform `name` (its `validate`, see check_ak); KeyError for a
    name that is no row."""
    return importlib.import_module(f"{__name__}.{PLATFORMS[name]}")


@dataclass(frozen=True)
class AkInputs:
    """What a caller may give the AK check; each platform's `validate` uses what it needs."""

    ek_roots: bytes | None = None  # qemu: the per-boot swtpm EK CA
    activate: Callable[[bytes, bytes], bytes] | None = None  # qemu: the credential activation round trip
    now: datetime | None = None
    fetch: Callable[[str], bytes] | None = None  # azure-trusted-launch: AIA issuers
    fetch_budget: float | None = None  # azure-trusted-launch: seconds for every fetch together
    snp_policy: object = None  # azure-cvm: azure_cvm.SnpPolicy


def check_ak(evidence, ak, *, ek_roots: bytes | None = None, now: datetime | None = None,
             snp_policy=None, fetch: Callable[[str], bytes] | None = None, fetch_budget: float | None = None,
             activate: Callable[[bytes, bytes], bytes] | None = None) -> list:
    """Rows (mithril_client.measurements.Row) whose row named `ak` is the verdict: the module of
    `evidence.platform` decides (its `validate(evidence, ak: TpmPublic, inputs: AkInputs)`)."""
    from ..certs import evidence_arg
    from ..measurements import Row

    evidence = evidence_arg(evidence)
    if evidence.platform not in PLATFORMS:
        return [Row("ak", "AK tied to a genuine TPM", f"no AK check for platform {evidence.platform!r}", "enforce",
                    "MISMATCH")]
    inputs = AkInputs(ek_roots=ek_roots, activate=activate, now=now, fetch=fetch, fetch_budget=fetch_budget,
                      snp_policy=snp_policy)
    return validator(evidence.platform).validate(evidence, ak, inputs)
