"""PCR 15 (application): measured-setup extends the app disk's dm-verity roothash (the 32 raw
bytes) before opening it, and 32 zero bytes once setup is done. The attestation server then
extends sha256(its TLS root CA PEM); measurements.json lists the value before that step and
verifiers replay it (`mithril_client.tpm2.with_ca`, where the PCR's steps are defined).
"""

from __future__ import annotations

from mithril_client.tpm2 import SENTINEL, TLS_PCR

from ..errors import BadInput
from .pcr import Simulator

PCR = TLS_PCR


def predict(sim: Simulator, roothash: bytes) -> bytes:
    if len(roothash) != 32:
        raise BadInput("appdisk.json", f"roothash: expected 32 bytes (64 hex digits), got {len(roothash)}")
    sim.extend(PCR, roothash, "measured-setup", "dm-verity roothash of the application disk")
    sim.extend(PCR, SENTINEL, "measured-setup", "32 zero bytes: application setup finished")
    return sim.value(PCR)
