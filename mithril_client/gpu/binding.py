"""The two derivations evidence version 2 rests on (docs/evidence.md), shared by the attestation
server and the client; standard library only.

- GPU nonce: every GPU signs SHA-256("mithril gpu nonce v1" ‖ 0x00 ‖ client nonce) (32 bytes,
  the size of an SPDM nonce).
- Binding: the quote's extraData is
  SHA-256("mithril evidence v2" ‖ 0x00 ‖ u8 len(nonce) ‖ nonce ‖ u32be count ‖
          for each GPU in order: SHA-384(report) ‖ SHA-384(cert_chain as served, UTF-8)),
  so the quote (the measured server's word) vouches for exactly these GPUs' evidence, and the
  client's nonce stays inside it.
"""

from __future__ import annotations

import hashlib
import struct


def derive_gpu_nonce(client_nonce: bytes) -> bytes:
    return hashlib.sha256(b"mithril gpu nonce v1\0" + client_nonce).digest()


def binding(nonce: bytes, gpus) -> bytes:
    """`gpus`: objects with `.report` and `.cert_chain` bytes, in the document's order."""
    h = hashlib.sha256(b"mithril evidence v2\0" + bytes([len(nonce)]) + nonce + struct.pack(">I", len(gpus)))
    for gpu in gpus:
        h.update(hashlib.sha384(gpu.report).digest() + hashlib.sha384(gpu.cert_chain).digest())
    return h.digest()
