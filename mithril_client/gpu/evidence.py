"""Evidence version 2 (docs/evidence.md): the GPU part of an evidence document and its binding
to the TPM quote (the derivations: `binding.py`). The document's GPU part itself (`GpuEvidence`) is
parsed with the rest of the document in `mithril_client/evidence.py`.

Which profiles are GPU profiles is said by measurements.json (`gpu`: the driver version the image
installs and the driver RIM that describes it); a GPU profile's evidence without GPUs fails, and
evidence with GPUs for a profile without them fails too.
"""

from __future__ import annotations

from ..measurements import Row
from .binding import binding, derive_gpu_nonce
from .check import RimSet, check_gpu


def quote_nonce(evidence, nonce: bytes) -> bytes:
    """What the quote's extraData must hold: the nonce (version 1) or the binding (version 2)."""
    return binding(nonce, evidence.gpus) if getattr(evidence, "version", 1) == 2 else nonce


def rename_binding_row(rows: list[Row], evidence) -> list[Row]:
    """For version 2, the quote's `nonce` row checks the binding: name it so."""
    if getattr(evidence, "version", 1) != 2:
        return rows
    return [Row("quote binding", f"SHA-256(nonce ‖ {len(evidence.gpus)} GPU evidence) {r.expected}", r.actual,
                r.policy, r.result) if r.check == "nonce" else r for r in rows]


def gpu_rows(evidence, nonce: bytes, measurements, rims: tuple = (), now=None, online=None) -> list[Row]:
    """The GPU rows of an evidence document against measurements.json's `gpu` section."""
    reference = getattr(measurements, "gpu", None)
    gpus = getattr(evidence, "gpus", ())
    if reference is None:
        if gpus:
            return [Row("gpu evidence", "none (measurements.json names no GPU)", f"{len(gpus)} GPU(s)", "enforce",
                        "MISMATCH")]
        return []
    if not gpus:
        return [Row("gpu evidence", f"GPU evidence (a GPU profile: driver {reference.driver_version})",
                    f"none (evidence version {getattr(evidence, 'version', 1)})", "enforce", "MISMATCH")]
    rim_set = RimSet(tuple(rims), frozenset({reference.driver_rim_sha256}), reference.rims_checked_at)
    gpu_nonce = derive_gpu_nonce(nonce)
    rows = []
    for i, gpu in enumerate(gpus):
        rows += check_gpu(gpu.report, gpu.cert_chain, gpu_nonce, rim_set, now=now,
                          driver_version=reference.driver_version, driver_sha256=reference.driver_rim_sha256,
                          label=f"gpu {i}: " if len(gpus) > 1 else "", where=f"evidence: gpus[{i}]", online=online)
    return rows
