"""The stages, in build order. Each module defines one Stage subclass."""

from __future__ import annotations

from ..graph import Stage
from .appdisk import AppDisk

STAGES: dict[str, type[Stage]] = {
    "appdisk": AppDisk,
}
