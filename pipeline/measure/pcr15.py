"""PCR 15 (application): measured-setup extends the app disk's dm-verity roothash (the 32 raw
bytes) before opening it, and 32 zero bytes once setup is done. The attestation server then
extends sha256(its TLS root CA PEM); measurements.json lists the value before that step and
verifiers replay it (`with_ca`).
"""

from __future__ import annotations

from ..errors import BadInput
from .pcr import Simulator, extend, sha256

PCR = 15
SENTINEL = bytes(32)


def predict(sim: Simulator, roothash: bytes) -> bytes:
    if len(roothash) != 32:
        raise BadInput("appdisk.json", f"roothash: expected 32 bytes (64 hex digits), got {len(roothash)}")
    sim.extend(PCR, roothash, "measured-setup", "dm-verity roothash of the application disk")
    sim.extend(PCR, SENTINEL, "measured-setup", "32 zero bytes: application setup finished")
    return sim.value(PCR)


def with_ca(value: bytes, ca_pem: bytes) -> bytes:
    """PCR 15 after the attestation server extended sha256(its TLS root CA PEM)."""
    return extend(value, sha256(ca_pem))
