"""The one list of platform names: what every side looks its per-platform code up in.

A row of PLATFORMS is a platform: its name (the `platform:` of mithril.yaml, measurements.json
and the evidence) and the module name under which each side keeps that platform's code:

  mithril_client/platforms/<module>.py      the validator: does the AK belong to a genuine TPM?
  attestation_server/platforms/<module>.py  the issuer: the AK, and what ties it to hardware
  pipeline/platforms/<module>/              the build: checks of mithril.yaml, template variables,
                                            deployment (and measurements/platforms/<name>.yaml)

Each side finds its code with `importlib.import_module(f"{package}.{PLATFORMS[name]}")`: the
build and the server in their platforms/__init__.py (which is also how pipeline/modules.py sees
that a stage uses the whole folder), the client in choose.py (`validator`, and `check_ak` by the
evidence's platform). Nothing else branches on a platform name. Adding a platform is one row
here and one module or folder per side (tests/unit/test_platform_registry.py checks both ways).

This module imports nothing: the attestation server and evidence.py read the names from here.
"""

from __future__ import annotations

PLATFORMS: dict[str, str] = {  # name -> module (folder) name on every side
    "qemu": "qemu",
    "azure-trusted-launch": "azure_trusted_launch",
    "azure-cvm": "azure_cvm",
}
NAMES = tuple(PLATFORMS)
