"""X.509 helpers for AK trust: PEM bundles and chain checks to a fixed set of trust anchors.

Hardware-vendor certificates (TPM EK certificates, AMD's VCEK) are not web PKI: they carry
critical extensions and subject forms that a TLS path validator rejects. What matters here is
signature by signature, issuer by issuer, each issuer a CA, each certificate in its validity
period, ending at an anchor we ship or were given.
"""

from __future__ import annotations

import datetime as dt

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm

from .errors import BadInput

MAX_DEPTH = 6


def load_pem_bundle(data: bytes, where: str) -> list[x509.Certificate]:
    """Every certificate of a PEM bundle (at least one)."""
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError as e:
        raise BadInput(where, f"not a PEM certificate bundle: {e}") from None
    if not certs:
        raise BadInput(where, "no certificate in the PEM bundle")
    return certs


def load_pem(data: bytes, where: str) -> x509.Certificate:
    certs = load_pem_bundle(data, where)
    if len(certs) != 1:
        raise BadInput(where, f"expected one certificate, got {len(certs)}")
    return certs[0]


def _valid_at(cert: x509.Certificate, now: dt.datetime) -> bool:
    return cert.not_valid_before_utc <= now <= cert.not_valid_after_utc


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        return False


def issued_by(child: x509.Certificate, parent: x509.Certificate) -> bool:
    try:
        child.verify_directly_issued_by(parent)
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        return False
    return True


def chain_to_anchor(leaf: x509.Certificate, intermediates: list[x509.Certificate],
                    anchors: list[x509.Certificate], now: dt.datetime | None = None) -> tuple[bool, str]:
    """(ok, the path or what broke it): leaf → intermediates… → one of `anchors`, every signature
    and validity period checked, every issuer a CA certificate."""
    now = now or dt.datetime.now(dt.timezone.utc)
    path = []
    cert = leaf
    for _ in range(MAX_DEPTH):
        path.append(_name(cert))
        if not _valid_at(cert, now):
            return False, f"{path[-1]} is not valid on {now:%Y-%m-%d}"
        anchor = next((a for a in anchors if issued_by(cert, a)), None)
        parent = anchor or next((c for c in intermediates if c != cert and issued_by(cert, c)), None)
        if parent is None:
            return False, f"no trusted issuer for {path[-1]} (issuer {cert.issuer.rfc4514_string()})"
        if not _is_ca(parent):
            return False, f"{_name(parent)} is not a CA certificate"
        if anchor is not None:
            if not _valid_at(anchor, now):
                return False, f"{_name(anchor)} is not valid on {now:%Y-%m-%d}"
            return True, " → ".join(path + [_name(anchor)])
        cert = parent
    return False, f"no anchor within {MAX_DEPTH} certificates"


def _name(cert: x509.Certificate) -> str:
    return cert.subject.rfc4514_string() or f"(empty subject, serial {cert.serial_number:x})"
