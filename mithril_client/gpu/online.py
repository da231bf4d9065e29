"""The online part of GPU verification, for machines that reach NVIDIA: RIMs from NVIDIA's RIM
service (or a mirror with the same API), and OCSP revocation checks of the GPU's certificate
chain and of each RIM's signing chain at NVIDIA's OCSP responder.

- RIM service: GET <base>/<id> answers JSON with the RIM as base64 in `rim` (NVIDIA's
  attestation API, /v1/rim/{id}). Ids: NV_GPU_DRIVER_GH100_<driver version> and
  NV_GPU_VBIOS_<project>_<project SKU>_<chip SKU>_<VBIOS version without dots, upper case>.
  A fetched RIM is trusted only after the same signature and chain checks as a local one.
- OCSP (RFC 6960): for each certificate below its issuer (the device chain from index 1, as
  NVIDIA's verifier does: the leaf is made by the GPU at boot and has no OCSP entry; every RIM
  chain from its signer) a request with a SHA-384 CertID and a nonce, POSTed to the responder;
  the answer must be SUCCESSFUL, signed by the issuer or by a responder certificate the issuer
  issued for OCSP signing, echo the nonce, name this certificate, be current, and say GOOD.

Neither service is reachable from the development machines: this code ran only against a local
stand-in HTTP server (tests/unit/test_gpu_online.py).
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509 import ocsp
from cryptography.x509.oid import ExtendedKeyUsageOID

from ..certs import cn, issued_by
from ..errors import BadInput
from . import spdm

RIM_SERVICE = "https://rim.attestation.nvidia.com/v1/rim/"
OCSP_URL = "https://ocsp.ndis.nvidia.com/"
MAX_ANSWER = 1 << 20
TIMEOUT = 10.0
CLOCK_SKEW = timedelta(minutes=5)


class Unreachable(Exception):
    """The service did not answer usably; the caller turns it into a failing row."""


def http_get(url: str) -> bytes:
    return _http(urllib.request.Request(url, headers={"Accept": "application/json"}))


def http_post(url: str, body: bytes, content_type: str) -> bytes:
    return _http(urllib.request.Request(url, data=body, headers={"Content-Type": content_type}))


def _http(request: urllib.request.Request) -> bytes:
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT) as answer:  # noqa: S310 -- https/http URLs we are given
            data = answer.read(MAX_ANSWER + 1)
    except (OSError, ValueError) as e:
        raise Unreachable(f"{request.full_url}: {e}") from None
    if len(data) > MAX_ANSWER:
        raise Unreachable(f"{request.full_url}: answer larger than {MAX_ANSWER} bytes")
    return data


@dataclass(frozen=True)
class Online:
    """Where the online checks go; `get`/`post` are injectable (tests point them at a stand-in)."""

    rim_service: str = RIM_SERVICE
    ocsp_url: str = OCSP_URL
    get: Callable[[str], bytes] = http_get
    post: Callable[[str, bytes, str], bytes] = http_post


def vbios_rim_id(report: spdm.Report) -> str | None:
    parts = [report.text("project"), report.text("project_sku"), report.text("chip_sku"), report.vbios_version]
    if not all(parts):
        return None
    project, sku, chip, version = parts
    return f"NV_GPU_VBIOS_{project.upper()}_{sku.upper()}_{chip.upper()}_{version.replace('.', '').upper()}"


def fetch_rim(rim_id: str, online: Online) -> bytes:
    """The RIM file (XML bytes) the service holds under `rim_id`; not yet verified."""
    if not rim_id.replace("_", "").replace(".", "").isalnum():
        raise BadInput("rim id", f"{rim_id!r}: not a RIM identifier")
    url = online.rim_service.rstrip("/") + "/" + rim_id
    try:
        doc = json.loads(online.get(url))
        rim = base64.b64decode(doc["rim"], validate=True)
    except (ValueError, KeyError, TypeError, binascii.Error, RecursionError):
        raise Unreachable(f"{url}: not a RIM service answer (JSON with a base64 `rim`)") from None
    if not rim:
        raise Unreachable(f"{url}: empty RIM")
    return rim


def _responder_ok(resp, issuer: x509.Certificate, now: datetime) -> str | None:
    """None when the response is signed by the issuer or by an OCSP-signing certificate it issued."""
    signer = issuer
    for cert in resp.certificates:
        if cert.subject == issuer.subject and cert.public_key() == issuer.public_key():
            continue
        if not issued_by(cert, issuer):
            return f"responder certificate {cn(cert)} is not issued by {cn(issuer)}"
        try:
            eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        except x509.ExtensionNotFound:
            return f"responder certificate {cn(cert)} is not for OCSP signing"
        if ExtendedKeyUsageOID.OCSP_SIGNING not in eku:
            return f"responder certificate {cn(cert)} is not for OCSP signing"
        if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
            return f"responder certificate {cn(cert)} is not valid now"
        signer = cert
    key = signer.public_key()
    try:
        if isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(resp.signature, resp.tbs_response_bytes, ec.ECDSA(resp.signature_hash_algorithm))
        elif isinstance(key, rsa.RSAPublicKey):
            from cryptography.hazmat.primitives.asymmetric import padding

            key.verify(resp.signature, resp.tbs_response_bytes, padding.PKCS1v15(), resp.signature_hash_algorithm)
        else:
            return "responder key type not supported"
    except (InvalidSignature, UnsupportedAlgorithm, TypeError):
        return "the OCSP response's signature does not verify"
    return None


def check_revocation(chain: list[x509.Certificate], online: Online, now: datetime, start: int = 0) -> tuple[bool, str]:
    """(ok, what was found) for chain[start] … chain[-2], each against its issuer (the next one)."""
    checked = []
    for cert, issuer in list(zip(chain, chain[1:]))[start:]:
        nonce = os.urandom(32)
        request = (ocsp.OCSPRequestBuilder().add_certificate(cert, issuer, hashes.SHA384())
                   .add_extension(x509.OCSPNonce(nonce), critical=False).build())
        try:
            resp = ocsp.load_der_ocsp_response(online.post(online.ocsp_url,
                                                           request.public_bytes(serialization.Encoding.DER),
                                                           "application/ocsp-request"))
        except Unreachable as e:
            return False, f"OCSP: {e}"
        except ValueError:
            return False, f"OCSP for {cn(cert)}: not an OCSP response"
        if resp.response_status != ocsp.OCSPResponseStatus.SUCCESSFUL:
            return False, f"OCSP for {cn(cert)}: {resp.response_status.name}"
        if problem := _responder_ok(resp, issuer, now):
            return False, f"OCSP for {cn(cert)}: {problem}"
        try:
            echoed = resp.extensions.get_extension_for_class(x509.OCSPNonce).value.nonce
        except x509.ExtensionNotFound:
            echoed = None
        if echoed != nonce:
            return False, f"OCSP for {cn(cert)}: the response does not echo our nonce"
        if resp.serial_number != cert.serial_number:
            return False, f"OCSP for {cn(cert)}: the response is about another certificate"
        stale = resp.next_update_utc is not None and resp.next_update_utc < now - CLOCK_SKEW
        if resp.this_update_utc > now + CLOCK_SKEW or stale:
            return False, f"OCSP for {cn(cert)}: the response is not current"
        if resp.certificate_status != ocsp.OCSPCertStatus.GOOD:
            reason = f" ({resp.revocation_reason.name})" if resp.revocation_reason else ""
            return False, f"{cn(cert)}: {resp.certificate_status.name}{reason}"
        checked.append(cn(cert))
    return True, f"good: {', '.join(checked)}" if checked else "nothing to check"
