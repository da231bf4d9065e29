"""X.509 for AK trust: pinned data certificates, PEM bundles from evidence, issuer signatures,
validity at an injectable `now`, and chains to fixed trust anchors.

Hardware-vendor certificates (TPM EK certificates, AMD's VCEK) are not web PKI: they carry
critical extensions and subject forms a TLS path validator rejects. What matters here is
signature by signature, issuer by issuer, each issuer a CA, each certificate in its validity
period, ending at an anchor we ship or were given."""

from __future__ import annotations

import hashlib
import warnings
from datetime import datetime, timezone
from importlib import resources

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from .errors import BadInput
from .evidence import Evidence
from .tpm2 import load_ak

MAX_PEM = 64 * 1024  # a VCEK chain or AK certificate with intermediates is a few KiB
MAX_CERTS = 8
MAX_DEPTH = 6


def _load_quietly(load, data: bytes):
    # AMD's VCEKs carry serial number 0, which cryptography loads with a deprecation warning
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load(data)


def data_cert(name: str, sha256: str) -> x509.Certificate:
    """A certificate shipped in mithril_client/data/, checked against its pinned DER fingerprint."""
    pem = resources.files("mithril_client").joinpath("data", name).read_bytes()
    cert = _load_quietly(x509.load_pem_x509_certificate, pem)
    if fingerprint(cert) != sha256:
        raise RuntimeError(f"mithril_client/data/{name}: fingerprint {fingerprint(cert)}, expected {sha256}")
    return cert


def fingerprint(cert: x509.Certificate) -> str:
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def cn(cert_or_name) -> str:
    name = cert_or_name.subject if isinstance(cert_or_name, x509.Certificate) else cert_or_name
    values = name.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    return str(values[0].value) if values else name.rfc4514_string()


def parse_cert_bytes(data: bytes) -> x509.Certificate | None:
    """A certificate from PEM or DER (what an AIA caIssuers URL serves), or None."""
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            cert = _load_quietly(x509.load_pem_x509_certificate, data)
        else:
            cert = _load_quietly(x509.load_der_x509_certificate, data)
        cert.extensions
        cert.public_key()
    except (ValueError, TypeError, UnsupportedAlgorithm):
        return None
    return cert


def pem_bundle(value, where: str) -> list[x509.Certificate]:
    """The certificates of a PEM field of the evidence, in order; anything malformed is a BadInput."""
    if not isinstance(value, (bytes, bytearray)):
        raise BadInput(where, f"expected PEM bytes, got {type(value).__name__}")
    if len(value) > MAX_PEM:
        raise BadInput(where, f"{len(value)} bytes; at most {MAX_PEM} are accepted")
    try:
        certs = _load_quietly(x509.load_pem_x509_certificates, bytes(value))
    except ValueError as e:
        raise BadInput(where, f"not PEM certificates: {e}") from None
    if len(certs) > MAX_CERTS:
        raise BadInput(where, f"{len(certs)} certificates; at most {MAX_CERTS} are accepted")
    for i, cert in enumerate(certs):
        try:  # cryptography parses these lazily; surface a malformed one here, once
            cert.extensions
            cert.public_key()
        except (ValueError, UnsupportedAlgorithm) as e:
            raise BadInput(where, f"certificate {i}: {e}") from None
    return certs


WEAK_HASHES = ("sha1", "md5")  # collisions are practical: a signature over them proves nothing


def weak_signature(cert: x509.Certificate) -> str | None:
    """Why `cert`'s signature cannot be trusted whoever made it (SHA-1, MD5), else None."""
    try:
        algorithm = cert.signature_hash_algorithm
    except UnsupportedAlgorithm:
        return f"{cn(cert)} is signed with an unknown algorithm ({cert.signature_algorithm_oid.dotted_string})"
    if algorithm is not None and algorithm.name in WEAK_HASHES:
        return f"{cn(cert)} is signed with {algorithm.name.upper()}, which is refused"
    return None


def issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    """True when `issuer`'s name and key sign `cert` (RSA PKCS#1 v1.5, RSA-PSS or ECDSA) with a
    hash that is not refused (`weak_signature`)."""
    if weak_signature(cert):
        return False
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        return False
    return True


def validity_problem(cert: x509.Certificate, now: datetime) -> str | None:
    if now < cert.not_valid_before_utc:
        return f"{cn(cert)} is not valid before {cert.not_valid_before_utc:%Y-%m-%d %H:%M:%S}Z"
    if now > cert.not_valid_after_utc:
        return f"{cn(cert)} expired {cert.not_valid_after_utc:%Y-%m-%d %H:%M:%S}Z"
    return None


def is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


def spki(key) -> bytes:
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def key_text(key) -> str:
    """A short, comparable description of a public key for a table row."""
    kind = f"RSA-{key.key_size}" if isinstance(key, rsa.RSAPublicKey) else key.curve.name
    return f"{kind} sha256(spki) {hashlib.sha256(spki(key)).hexdigest()}"


def ak_key_arg(ak_key):
    """The AK public key: a cryptography RSA/EC public key, or bytes (PEM, DER or TPM2B_PUBLIC)."""
    if isinstance(ak_key, (rsa.RSAPublicKey, ec.EllipticCurvePublicKey)):
        return ak_key
    if isinstance(ak_key, (bytes, bytearray)):
        return load_ak(bytes(ak_key), "ak_key")
    raise BadInput("ak_key", f"expected an RSA or EC public key (or its PEM/DER bytes), got {type(ak_key).__name__}")


def now_arg(now) -> datetime:
    if now is None:
        return datetime.now(timezone.utc)
    if not isinstance(now, datetime) or now.tzinfo is None:
        raise BadInput("now", f"expected a timezone-aware datetime, got {now!r}")
    return now


def evidence_arg(evidence) -> Evidence:
    if not isinstance(evidence, Evidence):
        raise BadInput("evidence", f"expected a mithril_client.evidence.Evidence, got {type(evidence).__name__}")
    return evidence


def chain_to_anchor(leaf: x509.Certificate, intermediates: list[x509.Certificate],
                    anchors: list[x509.Certificate], now: datetime | None = None) -> tuple[bool, str]:
    """(ok, the path or what broke it): leaf → intermediates… → one of `anchors`, every signature
    and validity period checked, every issuer a CA certificate."""
    now = now_arg(now)
    path, cert = [], leaf
    for _ in range(MAX_DEPTH):
        path.append(cn(cert))
        if problem := validity_problem(cert, now) or weak_signature(cert):
            return False, problem
        anchor = next((a for a in anchors if issued_by(cert, a)), None)
        parent = anchor or next((c for c in intermediates if c != cert and issued_by(cert, c)), None)
        if parent is None:
            return False, f"no trusted issuer for {path[-1]} (issuer {cn(cert.issuer)})"
        if not is_ca(parent):
            return False, f"{cn(parent)} is not a CA certificate"
        if anchor is not None:
            if problem := validity_problem(anchor, now) or weak_signature(anchor):
                return False, problem
            return True, " → ".join(path + [cn(anchor)])
        cert = parent
    return False, f"no anchor within {MAX_DEPTH} certificates"
