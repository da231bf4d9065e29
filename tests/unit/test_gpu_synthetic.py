"""The accepting path of every GPU row, and the forgery each row exists to stop, on evidence MADE
HERE (NVIDIA's real samples cannot show a full match: tests/fixtures/nvidia/SOURCES.md). The
device chain and the report are built and signed in this test; the RIMs are signed by xmlsec1
(an independent XMLDSig implementation) with keys made here; the roots are given to the checks in
place of NVIDIA's pinned ones. The SPDM layout is written here from DSP0274, independently of
mithril_client.gpu.spdm."""

from __future__ import annotations

import datetime as dt
import hashlib
import struct
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

from mithril_client.gpu.check import RimSet, check_gpu
from mithril_client.gpu.rim import parse_rim
from tests.conftest import need

AT = dt.datetime(2024, 6, 1, tzinfo=dt.timezone.utc)
LATER = dt.datetime(2026, 6, 1, tzinfo=dt.timezone.utc)  # after the RIM signer expired (2025-01-01)
NONCE = hashlib.sha256(b"a nonce").digest()
FWID = hashlib.sha384(b"GSP firmware").digest()
DRIVER, VBIOS = "550.90.07", "96.00.9f.00.01"
BLOCKS = 40  # SPDM blocks 1..40 (RIM indices 0..39)


def value(i: int) -> bytes:
    return hashlib.sha384(f"measurement {i}".encode()).digest()


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _cert(cn, key, issuer=None, issuer_key=None, ca=True, until=dt.datetime(2099, 1, 1), extra=None):
    b = (x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(issuer.subject if issuer else _name(cn))
         .public_key(key.public_key()).serial_number(x509.random_serial_number())
         .not_valid_before(dt.datetime(2023, 1, 1)).not_valid_after(until)
         .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if extra is not None:
        b = b.add_extension(extra, critical=False)
    return b.sign(issuer_key or key, hashes.SHA384())


def _der(tag: int, body: bytes) -> bytes:
    n = len(body)
    return bytes([tag]) + (bytes([n]) if n < 128 else bytes([0x81, n]) if n < 256 else bytes([0x82]) + n.to_bytes(2, "big")) + body


def dice_extension(key, fwid: bytes) -> x509.UnrecognizedExtension:
    """NVIDIA's leaf layout: SEQUENCE { INTEGER 1, SubjectPublicKeyInfo, SEQUENCE { OID sha384, OCTET STRING } }."""
    spki = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    fw = _der(0x30, _der(0x06, bytes.fromhex("608648016503040202")) + _der(0x04, fwid))
    return x509.UnrecognizedExtension(x509.ObjectIdentifier("2.23.133.5.4.1"), _der(0x30, _der(0x02, b"\x01") + spki + fw))


@dataclass
class Device:
    root: x509.Certificate
    chain_pem: bytes
    key: ec.EllipticCurvePrivateKey


@pytest.fixture(scope="module")
def device() -> Device:
    rk, ik, lk = (ec.generate_private_key(ec.SECP384R1()) for _ in range(3))
    root = _cert("test device root", rk)
    mid = _cert("test GH100 identity", ik, root, rk)
    leaf = _cert("test GSP FMC LF", lk, mid, ik, ca=False, extra=dice_extension(lk, FWID))
    pem = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in (leaf, mid, root))
    return Device(root, pem, lk)


def report(key, nonce=NONCE, values=None, opaque=None) -> bytes:
    """An SPDM 1.1 GET_MEASUREMENTS request + MEASUREMENTS response, signed like an H100's."""
    values = values or {i: value(i) for i in range(1, BLOCKS + 1)}
    request = bytes([0x11, 0xE0, 0x01, 0xFF]) + nonce + b"\x00"
    record = b"".join(struct.pack("<BBH", i, 1, 3 + len(v)) + struct.pack("<BH", 0x01, len(v)) + v
                      for i, v in sorted(values.items()))
    fields = {3: DRIVER.encode() + b"\0", 6: bytes.fromhex("009f009601000000"), 11: b"\x55", 17: b"1010\0",
              18: b"0200\0", 15: b"882\0", 20: FWID, 21: b"\x55", **(opaque or {})}
    opaque_data = b"".join(struct.pack("<HH", t, len(v)) + v for t, v in fields.items())
    body = (bytes([0x11, 0x60, 0, 0, len(values)]) + len(record).to_bytes(3, "little") + record + bytes(32)
            + struct.pack("<H", len(opaque_data)) + opaque_data)
    r, s = decode_dss_signature(key.sign(request + body, ec.ECDSA(hashes.SHA384())))
    return request + body + r.to_bytes(48, "big") + s.to_bytes(48, "big")


@dataclass
class RimSigner:
    root: x509.Certificate
    folder: Path


@pytest.fixture(scope="module")
def rim_signer(tmp_path_factory) -> RimSigner:
    need("xmlsec1")
    folder = tmp_path_factory.mktemp("rims")
    rk, sk = ec.generate_private_key(ec.SECP384R1()), ec.generate_private_key(ec.SECP384R1())
    root = _cert("test RIM root", rk)
    signer = _cert("test RIM signer", sk, root, rk, ca=False, until=dt.datetime(2025, 1, 1))
    (folder / "key.pem").write_bytes(sk.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                      serialization.NoEncryption()))
    (folder / "signer.pem").write_bytes(signer.public_bytes(serialization.Encoding.PEM))
    (folder / "root.pem").write_bytes(root.public_bytes(serialization.Encoding.PEM))
    return RimSigner(root, folder)


SIGNATURE_TEMPLATE = (
    '<ds:Signature xmlns:ds="http://www.w3.org/2000/09/xmldsig#"><ds:SignedInfo>'
    '<ds:CanonicalizationMethod Algorithm="http://www.w3.org/2006/12/xml-c14n11"/>'
    '<ds:SignatureMethod Algorithm="http://www.w3.org/2001/04/xmldsig-more#ecdsa-sha384"/>'
    '<ds:Reference URI=""><ds:Transforms>'
    '<ds:Transform Algorithm="http://www.w3.org/2000/09/xmldsig#enveloped-signature"/>'
    '<ds:Transform Algorithm="http://www.w3.org/2006/12/xml-c14n11"/></ds:Transforms>'
    '<ds:DigestMethod Algorithm="http://www.w3.org/2001/04/xmldsig-more#sha384"/><ds:DigestValue/></ds:Reference>'
    '</ds:SignedInfo><ds:SignatureValue/><ds:KeyInfo><ds:X509Data/></ds:KeyInfo></ds:Signature>')


def rim(signer: RimSigner, version: str, golden: dict[int, bytes], name: str, inactive=()) -> bytes:
    """A SWID RIM in NVIDIA's shape, signed by xmlsec1."""
    resources = "".join(
        f'\n        <ns0:Resource type="Measurement" index="{i}" active="{i not in inactive}" alternatives="2" '
        f'ns2:Hash0="{v.hex()}" ns2:Hash1="{bytes(48).hex()}" name="m{i}" size="48"/>' for i, v in sorted(golden.items()))
    text = ('<SoftwareIdentity xmlns="http://standards.iso.org/iso/19770/-2/2015/schema.xsd" '
            'xmlns:ns0="http://standards.iso.org/iso/19770/-2/2015/schema.xsd" '
            'xmlns:ns2="http://www.w3.org/2001/04/xmlenc#sha384" name="GH100" tagId="t" version="1.0">\n'
            f'    <ns0:Meta colloquialVersion="{version}" product="GH100"/>\n    <ns0:Payload>{resources}\n    </ns0:Payload>\n'
            + SIGNATURE_TEMPLATE + "</SoftwareIdentity>")
    template, out = signer.folder / f"{name}.tmpl", signer.folder / f"{name}.swidtag"
    template.write_text(text)
    subprocess.run(["xmlsec1", "--sign", "--privkey-pem", f"{signer.folder / 'key.pem'},{signer.folder / 'signer.pem'}",
                    "--output", str(out), str(template)], check=True, capture_output=True, timeout=60)
    return out.read_bytes()


DRIVER_INDICES = list(range(20, 36))  # RIM indices the driver RIM vouches for
VBIOS_INDICES = list(range(0, 13))  # … and the VBIOS RIM, index 9 (the CC mode) among them


def rims(signer, driver=None, vbios=None, **kw):
    d = rim(signer, DRIVER, driver or {i: value(i + 1) for i in DRIVER_INDICES}, "driver", kw.get("driver_inactive", ()))
    v = rim(signer, kw.get("vbios_version", "96.00.9F.00.01"), vbios or {i: value(i + 1) for i in VBIOS_INDICES}, "vbios",
            kw.get("vbios_inactive", ()))
    return parse_rim(d, "driver"), parse_rim(v, "vbios")


def run(device, signer, raw=None, rim_pair=None, now=AT, pinned=(), **kw):
    pair = rim_pair or rims(signer)
    rim_set = RimSet(pair, frozenset(r.sha256 for r in pair if r.version in pinned), AT, roots=(signer.root,))
    rows = check_gpu(raw or report(device.key), device.chain_pem, NONCE, rim_set, now=now, device_roots=(device.root,), **kw)
    return {r.check: r for r in rows}


def test_everything_verifies(device, rim_signer):
    rows = run(device, rim_signer, driver_version=DRIVER)
    assert {k: r.result for k, r in rows.items()} == {
        "gpu cert chain": "ok", "gpu signature": "ok", "gpu nonce": "ok", "gpu driver": "ok", "gpu vbios": "ok",
        "gpu mode": "ok", "gpu revocation": "skipped"}
    assert "15 of 15 match" in rows["gpu driver"].actual  # 16 indices, 35 skipped: NVDEC0 disabled
    assert "13 of 13 match" in rows["gpu vbios"].actual


def test_a_changed_measurement_is_refused(device, rim_signer):
    values = {i: value(i) for i in range(1, BLOCKS + 1)}
    values[25] = hashlib.sha384(b"another driver").digest()  # RIM index 24: the driver's
    rows = run(device, rim_signer, raw=report(device.key, values=values))
    assert rows["gpu driver"].failed and "[24]" in rows["gpu driver"].actual
    assert rows["gpu vbios"].result == "ok"


def test_devtools_mode_changes_measurement_9_and_is_refused(device, rim_signer):
    values = {i: value(i) for i in range(1, BLOCKS + 1)}
    values[10] = hashlib.sha384(b"CC devtools").digest()  # block 10 = RIM index 9
    rows = run(device, rim_signer, raw=report(device.key, values=values))
    assert rows["gpu vbios"].failed and rows["gpu mode"].failed


def test_mode_needs_the_vbios_rim_to_vouch_for_index_9(device, rim_signer):
    rows = run(device, rim_signer, rim_pair=rims(rim_signer, vbios_inactive=(9,)))
    assert rows["gpu vbios"].result == "ok" and rows["gpu mode"].failed


def test_protected_pcie_mode_is_refused(device, rim_signer):
    rows = run(device, rim_signer, raw=report(device.key, opaque={21: b"\xaa"}))
    assert rows["gpu mode"].failed and "protected-PCIe" in rows["gpu mode"].actual


def test_nvdec_enabled_brings_index_35_into_the_comparison(device, rim_signer):
    values = {i: value(i) for i in range(1, BLOCKS + 1)}
    values[36] = bytes(48)  # Hash1 of every golden value is zero: still a match
    assert run(device, rim_signer, raw=report(device.key, values=values, opaque={11: b"\xaa"}))["gpu driver"].result == "ok"
    values[36] = hashlib.sha384(b"x").digest()
    assert run(device, rim_signer, raw=report(device.key, values=values, opaque={11: b"\x55"}))["gpu driver"].result == "ok"
    assert run(device, rim_signer, raw=report(device.key, values=values, opaque={11: b"\xaa"}))["gpu driver"].failed


def test_an_index_in_both_rims_is_refused(device, rim_signer):
    both = {i: value(i + 1) for i in VBIOS_INDICES + [20]}
    rows = run(device, rim_signer, rim_pair=rims(rim_signer, vbios=both))
    assert rows["gpu vbios"].failed and "both" in rows["gpu vbios"].actual


def test_another_driver_than_the_images_is_refused(device, rim_signer):
    assert run(device, rim_signer, driver_version="535.309.01")["gpu driver"].failed


def test_only_the_pinned_driver_rim_counts(device, rim_signer):
    assert run(device, rim_signer, driver_sha256="0" * 64)["gpu driver"].failed


def test_a_vbios_rim_for_another_version_is_not_used(device, rim_signer):
    rows = run(device, rim_signer, rim_pair=rims(rim_signer, vbios_version="96.00.9F.00.02"))
    assert rows["gpu vbios"].failed and "none given" in rows["gpu vbios"].actual


def test_expired_rims_hold_only_when_pinned(device, rim_signer):
    rows = run(device, rim_signer, now=LATER)
    assert rows["gpu driver"].failed and "expired 2025-01-01" in rows["gpu driver"].actual
    rows = run(device, rim_signer, now=LATER, pinned=(DRIVER,))
    assert rows["gpu driver"].result == "ok" and rows["gpu vbios"].failed  # the VBIOS RIM is not pinned


def test_rims_signed_under_another_root_are_refused(device, rim_signer):
    pair = rims(rim_signer)
    rim_set = RimSet(pair, roots=(device.root,))  # the device root is no RIM root
    rows = {r.check: r for r in check_gpu(report(device.key), device.chain_pem, NONCE, rim_set, now=AT,
                                          device_roots=(device.root,))}
    assert rows["gpu driver"].failed and rows["gpu vbios"].failed


def test_a_report_signed_by_another_key_is_refused(device, rim_signer):
    rows = run(device, rim_signer, raw=report(ec.generate_private_key(ec.SECP384R1())))
    assert rows["gpu signature"].failed and rows["gpu cert chain"].result == "ok"


def test_a_report_for_another_fwid_is_refused(device, rim_signer):
    rows = run(device, rim_signer, raw=report(device.key, opaque={20: hashlib.sha384(b"other").digest()}))
    assert rows["gpu cert chain"].failed and "FWID" in rows["gpu cert chain"].actual
