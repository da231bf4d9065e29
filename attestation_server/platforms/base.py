"""What every platform module of the attestation server provides: an Issuer (docs/evidence.md,
"AK trust": the fields after tls_ca)."""

from __future__ import annotations

import base64
from collections.abc import Callable
from contextlib import AbstractContextManager

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ..tpm import Key, Tpm, TpmError

TpmSession = Callable[[], AbstractContextManager[Tpm]]  # the TPM, held by this request alone


class Issuer:
    """How the server finds the AK on a platform and what it adds to the evidence."""

    activation = False  # serves POST /attestation/activate (credential activation with the EK)

    def __init__(self, cfg, log: Callable[[str], None]):
        self.cfg, self.log = cfg, log

    def warm(self, session: TpmSession) -> None:
        """Work done at start, before the first client asks (a failure is logged, not fatal)."""

    def ak(self, tpm: Tpm) -> Key:
        raise NotImplementedError

    def read(self, tpm: Tpm):
        """With the TPM held, after the quote: what the TPM holds that ties the AK to hardware."""
        return {}

    def fields(self, held) -> dict[str, str]:
        """Outside the TPM lock: the evidence fields made from what `read` returned, in order."""
        return held

    def activate(self, tpm: Tpm, ak: Key, credential_blob: bytes, secret: bytes) -> bytes:
        raise NotImplementedError  # only where `activation` is set


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def der_prefix(data: bytes) -> bytes:
    """The DER element at the start of `data`: a certificate index may be larger than the
    certificate (Azure's AK certificate index is 4096 bytes, zero-padded)."""
    if len(data) < 2 or data[0] != 0x30:
        return data
    if data[1] < 0x80:
        return data[:2 + data[1]]
    n = data[1] & 0x7F
    return data[:2 + n + int.from_bytes(data[2:2 + n], "big")]


def nv_cert_pem(tpm: Tpm, index: int) -> str:
    der = der_prefix(tpm.nv_read(index))
    try:
        cert = x509.load_der_x509_certificate(der)
    except ValueError as e:
        raise TpmError("NV_Read", detail=f"NV 0x{index:08x} does not hold a DER certificate: {e}") from None
    return cert.public_bytes(serialization.Encoding.PEM).decode()
