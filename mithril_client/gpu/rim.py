"""NVIDIA's Reference Integrity Manifests: SWID tags (ISO/IEC 19770-2:2015) with TCG RIM
attributes, carrying the golden value of every GPU measurement for one driver version or one
VBIOS, signed with an enveloped XML signature (XMLDSig 1.1) by a certificate that chains to
NVIDIA's RIM root ("NVIDIA CoRIM signing Root CA", shipped in mithril_client/data).

Checked, and nothing else accepted: exactly one ds:Signature, a direct child of the document
element; SignedInfo canonicalized with C14N 1.1 (or 1.0, identical for these documents);
ECDSA-SHA384 (r || s, RFC 4051); one Reference to the whole document (URI="") with the
enveloped-signature transform then C14N 1.1/1.0; digest SHA-384. Since the reference covers the
whole document and only the document element's own Meta and Payload children are read, what
is read is what was signed. The signing certificate is the first X509Certificate of KeyInfo;
the rest may serve as intermediates; the chain must end at the pinned root.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from dataclasses import dataclass
from datetime import datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from ..certs import chain_to_anchor, data_cert, parse_cert_bytes
from ..errors import BadInput
from . import c14n

DSIG = "http://www.w3.org/2000/09/xmldsig#"
SWID = "http://standards.iso.org/iso/19770/-2/2015/schema.xsd"
SHA384_NS = "http://www.w3.org/2001/04/xmlenc#sha384"  # the namespace of the Hash0… attributes
C14N = ("http://www.w3.org/2006/12/xml-c14n11", "http://www.w3.org/TR/2001/REC-xml-c14n-20010315")
ENVELOPED = "http://www.w3.org/2000/09/xmldsig#enveloped-signature"
ECDSA_SHA384 = "http://www.w3.org/2001/04/xmldsig-more#ecdsa-sha384"
DIGEST_SHA384 = ("http://www.w3.org/2001/04/xmldsig-more#sha384", "http://www.w3.org/2001/04/xmlenc#sha384")
MAX_RIM = 1 << 20  # the samples are 20 KiB
RIM_ROOT = ("nvidia-rim-root.pem", "12977b5115acb0381179279fffeb5a8c4d264971ebb32298023a465fa41df5d1")


@dataclass(frozen=True)
class Golden:
    index: int  # NVIDIA's RIM numbering: the report's SPDM block index - 1
    name: str
    size: int
    active: bool
    values: tuple[bytes, ...]


@dataclass(frozen=True)
class Rim:
    raw: bytes
    sha256: str
    tag_id: str
    product: str  # e.g. GH100
    version: str  # colloquialVersion: the driver version (550.90.07) or VBIOS version (96.00.5E.00.01)
    golden: dict[int, Golden]
    signature_problem: str | None  # None when the XML signature verifies with the signing certificate
    signer: x509.Certificate | None
    certs: tuple[x509.Certificate, ...]

    def chain(self, now: datetime, roots: tuple = ()) -> tuple[bool, str]:
        """(ok, path or what broke it): the signing certificate to NVIDIA's pinned RIM root (or
        to `roots`, when given) at `now`."""
        if self.signer is None:
            return False, "no signing certificate"
        return chain_to_anchor(self.signer, list(self.certs[1:]), list(roots) or [rim_root()], now)

    def problem(self, now: datetime, roots: tuple = ()) -> str | None:
        """Why this RIM cannot be trusted at `now`, or None."""
        if self.signature_problem:
            return f"RIM signature: {self.signature_problem}"
        ok, why = self.chain(now, roots)
        return None if ok else f"RIM signing chain: {why}"


def rim_root() -> x509.Certificate:
    return data_cert(*RIM_ROOT)


def _child(el: c14n.Element, local: str, ns: str, where: str, required: bool = True) -> c14n.Element | None:
    found = [c for c in el.elements() if c.local == local and c.namespace() == ns]
    if len(found) > 1:
        raise BadInput(where, f"<{el.qname}> has {len(found)} <{local}> elements, expected one")
    if not found and required:
        raise BadInput(where, f"<{el.qname}> has no <{local}>")
    return found[0] if found else None


def _ns_attr(el: c14n.Element, ns: str, local: str) -> str | None:
    scope = el.in_scope()
    for name, value in el.attrs:
        if ":" in name:
            prefix, attr_local = name.split(":", 1)
            if attr_local == local and scope.get(prefix) == ns:
                return value
    return None


def _algorithm(el: c14n.Element, allowed: tuple[str, ...], where: str, what: str) -> str:
    alg = el.attr("Algorithm")
    if alg not in allowed:
        raise BadInput(where, f"{what}: algorithm {alg!r} is not accepted ({', '.join(allowed)})")
    return alg


def _b64(text: str, where: str, what: str) -> bytes:
    try:
        return base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        raise BadInput(where, f"{what}: not base64") from None


def _verify_signature(root: c14n.Element, sig: c14n.Element, where: str) -> tuple[str | None, list[x509.Certificate]]:
    """(None or what is wrong, the KeyInfo certificates). Structure outside the accepted profile
    is a BadInput; a digest or signature that does not verify is a problem string."""
    signed_info = _child(sig, "SignedInfo", DSIG, where)
    _algorithm(_child(signed_info, "CanonicalizationMethod", DSIG, where), C14N, where, "CanonicalizationMethod")
    _algorithm(_child(signed_info, "SignatureMethod", DSIG, where), (ECDSA_SHA384,), where, "SignatureMethod")
    refs = [c for c in signed_info.elements() if c.local == "Reference" and c.namespace() == DSIG]
    if len(refs) != 1 or refs[0].attr("URI") != "":
        raise BadInput(where, "SignedInfo: expected exactly one Reference with URI=\"\" (the whole document)")
    ref = refs[0]
    transforms = _child(ref, "Transforms", DSIG, where)
    algs = [t.attr("Algorithm") for t in transforms.elements()]
    if not (algs == [ENVELOPED] or (len(algs) == 2 and algs[0] == ENVELOPED and algs[1] in C14N)):
        raise BadInput(where, f"Reference transforms {algs}: expected enveloped-signature, then C14N")
    _algorithm(_child(ref, "DigestMethod", DSIG, where), DIGEST_SHA384, where, "DigestMethod")
    digest_value = _b64(_child(ref, "DigestValue", DSIG, where).text(), where, "DigestValue")
    signature_value = _b64(_child(sig, "SignatureValue", DSIG, where).text(), where, "SignatureValue")
    key_info = _child(sig, "KeyInfo", DSIG, where)
    x509_data = _child(key_info, "X509Data", DSIG, where)
    certs = []
    for i, el in enumerate(c for c in x509_data.elements() if c.local == "X509Certificate" and c.namespace() == DSIG):
        cert = parse_cert_bytes(_b64(el.text(), where, f"X509Certificate[{i}]"))
        if cert is None:
            raise BadInput(where, f"KeyInfo X509Certificate[{i}]: not a certificate")
        certs.append(cert)
    if not certs:
        raise BadInput(where, "KeyInfo holds no X509Certificate")

    if not hmac.compare_digest(hashlib.sha384(c14n.canonicalize(root, exclude=sig)).digest(), digest_value):
        return "the document's SHA-384 is not the signed DigestValue (the RIM was changed)", certs
    key = certs[0].public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp384r1" or len(signature_value) != 96:
        return "the signing certificate's key is not ECDSA P-384, or the signature is not 96 bytes", certs
    der = encode_dss_signature(int.from_bytes(signature_value[:48], "big"), int.from_bytes(signature_value[48:], "big"))
    try:
        key.verify(der, c14n.canonicalize(signed_info), ec.ECDSA(hashes.SHA384()))
    except InvalidSignature:
        return "the SignatureValue does not verify with the signing certificate", certs
    return None, certs


_HEX = re.compile(r"^[0-9a-fA-F]*$")


def parse_rim(raw: bytes, where: str = "rim") -> Rim:
    """A RIM with its signature checked (the result in `signature_problem`; the certificate
    chain is judged at a time the caller chooses, `Rim.problem(now)`)."""
    if len(raw) > MAX_RIM:
        raise BadInput(where, f"{len(raw)} bytes; a RIM is at most {MAX_RIM}")
    root = c14n.parse(raw, where)
    if root.local != "SoftwareIdentity" or root.namespace() != SWID:
        raise BadInput(where, f"<{root.qname}> is not a SWID tag (SoftwareIdentity in {SWID})")
    sigs = [c for c in root.elements() if c.local == "Signature" and c.namespace() == DSIG]
    if len(sigs) != 1:
        raise BadInput(where, f"{len(sigs)} ds:Signature children of the SWID tag, expected exactly one")
    if sum(1 for _ in _descendants(root, "Signature")) != 1:
        raise BadInput(where, "a ds:Signature elsewhere than under the SWID tag: refused")
    problem, certs = _verify_signature(root, sigs[0], where)

    meta = _child(root, "Meta", SWID, where)
    version = meta.attr("colloquialVersion")
    if not version:
        raise BadInput(where, "Meta: no colloquialVersion")
    payload = _child(root, "Payload", SWID, where)
    golden: dict[int, Golden] = {}
    for res in payload.elements():
        if res.local != "Resource" or res.namespace() != SWID:
            raise BadInput(where, f"Payload: unexpected <{res.qname}>")
        name = res.attr("name") or "?"
        try:
            index, size, alternatives = (int(res.attr(k) or "") for k in ("index", "size", "alternatives"))
        except ValueError:
            raise BadInput(where, f"Resource {name}: index, size and alternatives must be integers") from None
        active = res.attr("active")
        if active not in ("True", "False") or not (0 <= index < 256 and 0 < size <= 64 and 0 < alternatives <= 16):
            raise BadInput(where, f"Resource {name}: active/index/size/alternatives out of range")
        values = []
        for i in range(alternatives):
            value = _ns_attr(res, SHA384_NS, f"Hash{i}")
            if value is None or not _HEX.match(value) or len(value) != 2 * size:
                raise BadInput(where, f"Resource {name}: Hash{i} missing or not {size} bytes of hex")
            values.append(bytes.fromhex(value))
        if index in golden:
            raise BadInput(where, f"Resource {name}: index {index} appears twice")
        golden[index] = Golden(index, name, size, active == "True", tuple(values))
    if not golden:
        raise BadInput(where, "Payload: no measurements")
    return Rim(raw, hashlib.sha256(raw).hexdigest(), root.attr("tagId") or "", meta.attr("product") or "",
               version, golden, problem, certs[0], tuple(certs))


def _descendants(el: c14n.Element, local: str):
    for child in el.elements():
        if child.local == local and child.namespace() == DSIG:
            yield child
        yield from _descendants(child, local)
