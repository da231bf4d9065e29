"""NVIDIA H100 confidential-computing attestation, verified offline (docs/gpu.md, "GPU attestation").

- `spdm`: the attestation report (SPDM 1.1 GET_MEASUREMENTS request + signed MEASUREMENTS
  response with NVIDIA's opaque data) parsed and range-checked.
- `c14n`: XML Canonicalization 1.1 (inclusive, without comments) on the standard library's
  expat, for exactly the documents a RIM is; anything outside that subset is refused.
- `rim`: NVIDIA's Reference Integrity Manifests (signed SWID tags): the enveloped XML
  signature, its certificate chain to NVIDIA's RIM root, the golden measurements.
- `check`: the table rows (`gpu cert chain`, `gpu signature`, `gpu nonce`, `gpu driver`,
  `gpu vbios`, `gpu mode`) for one GPU's evidence.
- `online`: NVIDIA's RIM service and OCSP, for when they are reachable.

Depends on `cryptography` only.
"""
