"""The stages, in build order. Each module defines one Stage subclass."""

from __future__ import annotations

from ..graph import Stage
from .appdisk import AppDisk
from .os_image import OsImage
from .provenance import Provenance

STAGES: dict[str, type[Stage]] = {
    "appdisk": AppDisk,
    "os": OsImage,
    "provenance": Provenance,  # last: it describes every other stage's outputs
}
