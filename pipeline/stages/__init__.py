"""The stages, in build order. Each module defines one Stage subclass."""

from __future__ import annotations

from ..graph import Stage
from .appdisk import AppDisk
from .measurements import Measurements
from .model_engine import ModelEngine
from .os_image import OsImage
from .provenance import Provenance

STAGES: dict[str, type[Stage]] = {
    "model": ModelEngine,  # first: appdisk copies its model repository
    "appdisk": AppDisk,
    "os": OsImage,
    "measurements": Measurements,
    "provenance": Provenance,  # last: it describes every other stage's outputs
}
