"""Where an image runs: one package per platform, chosen by a profile's `platform:` (`get`).

The names are the client's registry (mithril_client.platforms.PLATFORMS), which also names the
folder here: azure_cvm/ is `platform: azure-cvm`. The folder's __init__.py defines PLATFORM, a
`base.Platform`; folders in no registry row hold code several platforms share (azure/). A
platform's firmware facts are project data, measurements/platforms/<name>.yaml (`firmware.py`:
`init` copies them, `record-platform` adds observed values, measurements.json names the file).
Adding a platform: README "Architecture: where things go".
"""

from __future__ import annotations

import importlib
from functools import cache

from mithril_client.platforms import PLATFORMS

from .base import Platform


@cache
def _platforms() -> dict[str, Platform]:
    return {name: importlib.import_module(f"{__name__}.{module}").PLATFORM for name, module in PLATFORMS.items()}


def names() -> tuple[str, ...]:
    """Every platform's name, sorted."""
    return tuple(sorted(_platforms()))


def get(name: str) -> Platform:
    """The platform named by a profile (mithril.yaml's check has allowed only `names()`)."""
    return _platforms()[name]


def bootable() -> tuple[str, ...]:
    """The platforms `boot` and `record-platform` can start on this machine, sorted."""
    return tuple(n for n in names() if get(n).boots_here)
