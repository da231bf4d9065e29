"""TPM2_MakeCredential's math, done by the verifier (TPM 2.0 Part 1, "Credential Protection";
Part 3, MakeCredential): a secret that only a TPM holding both the EK and the object named
`ak_name` can recover with TPM2_ActivateCredential.

The EK is assumed to follow the TCG EK Credential Profile's RSA 2048 template (L-1: nameAlg
sha256, AES-128-CFB symmetric), which is what swtpm_setup and every vTPM we target create.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

try:  # AES-CFB moved to the "decrepit" module in cryptography 43 (still what the TPM uses)
    from cryptography.hazmat.decrepit.ciphers.modes import CFB
except ImportError:  # older cryptography (Debian bookworm's 38)
    from cryptography.hazmat.primitives.ciphers.modes import CFB

from .errors import BadInput
from .tpm2 import tpm2b

EK_NAME_ALG = "sha256"
EK_SYM_BITS = 128


def kdfa(hash_name: str, key: bytes, label: bytes, context_u: bytes, context_v: bytes, bits: int) -> bytes:
    """SP 800-108 counter-mode KDF with HMAC as the TPM uses it (Part 1, 11.4.10.2): each block is
    HMAC(key, counter ‖ label ‖ 00 ‖ contextU ‖ contextV ‖ bits), counter and bits 32-bit big-endian."""
    out = b""
    counter = 0
    while len(out) * 8 < bits:
        counter += 1
        out += hmac.new(key, struct.pack(">I", counter) + label + b"\0" + context_u + context_v
                        + struct.pack(">I", bits), hash_name).digest()
    return out[:(bits + 7) // 8]


def make_credential(ek_public_key, ak_name: bytes, credential: bytes, seed: bytes | None = None) -> tuple[bytes, bytes]:
    """Return (TPM2B_ID_OBJECT credentialBlob, TPM2B_ENCRYPTED_SECRET secret) for an RSA EK."""
    if not isinstance(ek_public_key, rsa.RSAPublicKey):
        raise BadInput("ek_cert", "the EK is not an RSA key", "credential activation supports the RSA 2048 EK")
    if not 1 <= len(credential) <= hashlib.new(EK_NAME_ALG).digest_size:
        raise BadInput("credential", f"{len(credential)} bytes; at most the EK name digest size")
    digest_size = hashlib.new(EK_NAME_ALG).digest_size
    seed = seed if seed is not None else os.urandom(digest_size)
    encrypted_seed = ek_public_key.encrypt(seed, padding.OAEP(mgf=padding.MGF1(hashes.SHA256()),
                                                              algorithm=hashes.SHA256(), label=b"IDENTITY\0"))
    sym_key = kdfa(EK_NAME_ALG, seed, b"STORAGE", ak_name, b"", EK_SYM_BITS)
    plain = tpm2b(credential)  # TPM2B_DIGEST
    encryptor = Cipher(algorithms.AES(sym_key), CFB(bytes(16))).encryptor()
    enc_identity = encryptor.update(plain) + encryptor.finalize()
    hmac_key = kdfa(EK_NAME_ALG, seed, b"INTEGRITY", b"", b"", digest_size * 8)
    outer = hmac.new(hmac_key, enc_identity + ak_name, EK_NAME_ALG).digest()
    return tpm2b(tpm2b(outer) + enc_identity), tpm2b(encrypted_seed)
