"""The attestation server's code per platform: one module per row of the client's registry
(mithril_client.platforms.PLATFORMS), named as that row says, each defining ISSUER, a subclass
of `base.Issuer`: which key is the AK, and what the evidence carries to tie it to hardware."""

from __future__ import annotations

import importlib

from mithril_client.platforms import PLATFORMS

from .base import Issuer


def issuer(name: str) -> type[Issuer]:
    """The Issuer class of platform `name` (KeyError for a name not in the registry)."""
    return importlib.import_module(f"{__name__}.{PLATFORMS[name]}").ISSUER
