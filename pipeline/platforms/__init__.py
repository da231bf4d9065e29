"""Where an image runs: one package per platform, chosen by a profile's `platform:` (`get`).

A platform's name is its folder's, with "-" for "_" (azure_cvm/ is `platform: azure-cvm`); the
folder's __init__.py defines PLATFORM, a `base.Platform`. Folders without PLATFORM hold code several
platforms share (azure/). Adding a platform is adding a folder here, plus its firmware facts in
the project's measurements/platforms/<name>.yaml (project data: `init` copies it, `record-platform`
adds observed values to it, measurements.json names it).
"""

from __future__ import annotations

import importlib
import pkgutil
from functools import cache

from .base import Platform


@cache
def _platforms() -> dict[str, Platform]:
    found = {}
    for info in pkgutil.iter_modules(__path__):
        if not info.ispkg:
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        if hasattr(module, "PLATFORM"):
            found[module.PLATFORM.name] = module.PLATFORM
    return found


def names() -> tuple[str, ...]:
    """Every platform's name, sorted."""
    return tuple(sorted(_platforms()))


def get(name: str) -> Platform:
    """The platform named by a profile (mithril.yaml's check has allowed only `names()`)."""
    return _platforms()[name]
