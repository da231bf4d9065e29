"""AK trust on Azure SEV-SNP confidential VMs, on REAL captures from Azure (Milan and Genoa hosts,
tests/fixtures/azure/SOURCES.md), tampered copies of them, and malformed input; openssl is the
independent oracle for the VCEK chain, the VCEK's extensions and the report signature."""

from __future__ import annotations

import base64
import hashlib
import json
import random
import re
import struct
import subprocess
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature

from mithril_client import tpm2
from mithril_client.errors import BadInput
from mithril_client.evidence import Evidence
from mithril_client.platforms import azure_cvm as cvm
from mithril_client.platforms.choose import check_ak
from tests.conftest import need

# AMD's VCEKs have serial number 0; cryptography warns when the tests load them directly
pytestmark = pytest.mark.filterwarnings("ignore:Parsed a serial number")

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "azure" / "cvm"
DATA = Path(cvm.__file__).resolve().parent.parent / "data"
NOW = datetime(2026, 1, 1, tzinfo=timezone.utc)  # inside the VCEKs' validity (2025-01 .. 2032-01)
REPORT = cvm.HCL_HEADER  # offset of the SNP report inside the HCL report
RUNTIME = cvm.HCL_HEADER + cvm.SNP_REPORT + cvm.IGVM_HEADER  # offset of the runtime data (1110 bytes in milan)
CAPTURES = {"milan": "trustee-evidence-v2-milan.json", "genoa": "trustee-evidence-genoa.json"}


def _b64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class Capture:
    """One real capture: HCL report, vTPM quote + raw RSASSA signature, VCEK (Trustee's format)."""

    def __init__(self, product: str):
        doc = json.loads((FIXTURES / CAPTURES[product]).read_text())
        self.product = product
        self.hcl = _b64url(doc["hcl_report"]) if "hcl_report" in doc else bytes(doc["report"])
        quote = doc.get("tpm_quote") or doc["quote"]
        def raw(value):  # hex text (evidence-v2.json) or a byte array (evidence-genoa.json)
            return bytes.fromhex(value) if isinstance(value, str) else bytes(value)

        self.quote, raw_sig = raw(quote["message"]), raw(quote["signature"])
        self.signature = struct.pack(">HHH", 0x0014, 0x000B, len(raw_sig)) + raw_sig  # TPMT_SIGNATURE, RSASSA-SHA256
        vcek = doc["vcek"]
        self.vcek_pem = (vcek.encode() if vcek.startswith("-----") else
                         x509.load_der_x509_certificate(_b64url(vcek)).public_bytes(serialization.Encoding.PEM))
        self.ask_pem = (DATA / f"amd-{product}-ask.pem").read_bytes()
        self.ark_pem = (DATA / f"amd-{product}-ark.pem").read_bytes()
        # the vTPM AK as the HCL reports it; the test below shows that it is the key that signed the quote
        self.ak = cvm._jwk_key(cvm.parse_hcl_report(self.hcl).ak_jwk)

    def chain(self, vcek_pem: bytes | None = None, ark_pem: bytes | None = None) -> bytes:
        return b"\n".join([vcek_pem or self.vcek_pem, self.ask_pem, ark_pem or self.ark_pem])

    def evidence(self, hcl: bytes | None = None, chain: bytes | None = None) -> Evidence:
        ak_pem = self.ak.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        return Evidence("azure-cvm", bytes(32), self.quote, self.signature, {"sha256": {}}, ak_pem, b"", b"",
                        hcl_report=self.hcl if hcl is None else hcl,
                        vcek_chain=self.chain() if chain is None else chain)


@pytest.fixture(scope="module", params=sorted(CAPTURES))
def cap(request) -> Capture:
    return Capture(request.param)


@pytest.fixture(scope="module")
def milan() -> Capture:
    return Capture("milan")


def rows(ev, ak, **kw) -> dict[str, object]:
    out = cvm.check_ak(ev, ak, now=kw.pop("now", NOW), **kw)
    names = [r.check for r in out]
    assert len(names) == len(set(names))
    return {r.check: r for r in out}


def failed(table) -> set[str]:
    return {name for name, r in table.items() if r.failed}


def flip(data: bytes, offset: int, mask: int = 0x01) -> bytes:
    out = bytearray(data)
    out[offset] ^= mask
    return bytes(out)


# ---------------------------------------------------------------------------- the real captures

def test_real_capture_verifies(cap):
    quote, sig = tpm2.parse_quote(cap.quote), tpm2.parse_signature(cap.signature)
    assert tpm2.signature_valid(quote, sig, cap.ak), "HCLAkPub is the key that signed the vTPM quote"
    table = rows(cap.evidence(), cap.ak)
    assert not failed(table), table
    assert table["ak"].result == "ok"
    assert set(table) == {"ak", "snp vcek chain", "snp signature", "snp vcek tcb", "snp report_data", "snp HCLAkPub",
                          "snp id key", "snp author key", "snp measurement", "snp debug", "snp guest policy",
                          "snp vmpl", "snp tcb"}
    # the digest of the ID key that signed Azure's paravisor, read from the genuine report
    assert table["snp id key"].actual == cvm.AZURE_ID_KEY_DIGESTS[0]
    assert cap.product.capitalize() in table["ak"].actual


def test_dispatcher_picks_the_cvm_check(milan):
    ak = tpm2.TpmPublic(milan.ak, "sha256", 0, b"")  # the dispatcher takes the AK's public area
    assert [r.check for r in check_ak(milan.evidence(), ak, now=NOW)][0] == "ak"
    assert not any(r.failed for r in check_ak(milan.evidence(), ak, now=NOW))


def test_parse_fields(cap):
    hcl = cvm.parse_hcl_report(cap.hcl)
    assert hcl.hash_type == "sha256"
    assert hashlib.sha256(hcl.runtime_data).digest() == hcl.report.report_data[:32]
    assert json.loads(hcl.runtime_data)["keys"][0]["kid"] == "HCLAkPub"
    assert hcl.report.vmpl == 0 and hcl.report.signature_algo == 1
    assert not hcl.report.policy & cvm.POLICY_DEBUG


def test_openssl_verifies_the_vcek_chain(cap, tmp_path):
    need("openssl")
    for name, pem in (("vcek", cap.vcek_pem), ("ask", cap.ask_pem), ("ark", cap.ark_pem)):
        (tmp_path / f"{name}.pem").write_bytes(pem)
    res = subprocess.run(["openssl", "verify", "-CAfile", tmp_path / "ark.pem", "-untrusted", tmp_path / "ask.pem",
                          tmp_path / "vcek.pem"], capture_output=True, text=True, check=False)
    assert res.returncode == 0 and res.stdout.strip().endswith("OK"), res.stdout + res.stderr
    assert cvm._vcek_chain(x509.load_pem_x509_certificates(cap.chain()), NOW)[0].name.lower() == cap.product


def test_openssl_reads_the_same_vcek_extensions(cap, tmp_path):
    need("openssl")
    (tmp_path / "vcek.pem").write_bytes(cap.vcek_pem)
    dump = subprocess.run(["openssl", "asn1parse", "-in", tmp_path / "vcek.pem"], capture_output=True, text=True,
                          check=True).stdout
    # each extension: "OBJECT :<oid>" then "OCTET STRING [HEX DUMP]:<extnValue>"
    values = dict(re.findall(r"OBJECT\s+:([0-9.]+)\n.*?\[HEX DUMP\]:([0-9A-F]+)", dump))
    spl = {oid: int(values[oid][4:], 16) for oid in ("1.3.6.1.4.1.3704.1.3.1", "1.3.6.1.4.1.3704.1.3.2",
                                                     "1.3.6.1.4.1.3704.1.3.3", "1.3.6.1.4.1.3704.1.3.8")}
    tcb, hwid = cvm.vcek_tcb(x509.load_pem_x509_certificate(cap.vcek_pem))
    assert tcb == cvm.Tcb(*spl.values())
    assert hwid.hex().upper() == values["1.3.6.1.4.1.3704.1.4"]
    assert tcb == cvm.parse_hcl_report(cap.hcl).report.reported_tcb


def test_openssl_verifies_the_report_signature(cap, tmp_path):
    need("openssl")
    report = cvm.parse_hcl_report(cap.hcl).report
    vcek = x509.load_pem_x509_certificate(cap.vcek_pem)
    (tmp_path / "pub.pem").write_bytes(vcek.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    (tmp_path / "signed.bin").write_bytes(cap.hcl[REPORT:REPORT + 0x2A0])
    (tmp_path / "sig.der").write_bytes(encode_dss_signature(report.r, report.s))
    res = subprocess.run(["openssl", "dgst", "-sha384", "-verify", tmp_path / "pub.pem", "-signature",
                          tmp_path / "sig.der", tmp_path / "signed.bin"], capture_output=True, text=True, check=False)
    assert "Verified OK" in res.stdout, res.stdout + res.stderr


# ---------------------------------------------------------------------------- tampered copies

def test_flipped_byte_in_the_report(milan):
    table = rows(milan.evidence(hcl=flip(milan.hcl, REPORT + 0x90)), milan.ak)  # measurement
    assert failed(table) == {"ak", "snp signature"}


def test_flipped_byte_in_report_data(milan):
    table = rows(milan.evidence(hcl=flip(milan.hcl, REPORT + 0x50)), milan.ak)
    assert failed(table) == {"ak", "snp signature", "snp report_data"}


def test_flipped_byte_in_the_runtime_datas_ak(milan):
    hcl = cvm.parse_hcl_report(milan.hcl)
    n = hcl.ak_jwk["n"]
    at = milan.hcl.index(n.encode()) + 20  # a base64url digit inside the modulus
    swapped = b"B" if milan.hcl[at:at + 1] != b"B" else b"C"
    tampered = milan.hcl[:at] + swapped + milan.hcl[at + 1:]
    table = rows(milan.evidence(hcl=tampered), milan.ak)
    assert failed(table) == {"ak", "snp report_data", "snp HCLAkPub"}


def test_vcek_of_another_chip(milan):
    genoa = Capture("genoa")
    table = rows(milan.evidence(chain=genoa.chain()), milan.ak)
    assert table["snp vcek chain"].result == "ok"  # a genuine Genoa VCEK, just not this report's signer
    assert failed(table) == {"ak", "snp signature", "snp vcek tcb", "snp tcb"}


def test_ark_in_the_evidence_that_is_not_amds(milan):
    table = rows(milan.evidence(chain=milan.chain(ark_pem=(DATA / "amd-genoa-ark.pem").read_bytes())), milan.ak)
    assert failed(table) == {"ak", "snp vcek chain"}
    assert "not AMD's ARK-Milan" in table["snp vcek chain"].actual


def _forged_vcek(real_pem: bytes, key) -> bytes:
    """A VCEK with the real one's names and extensions, issued by a made-up "SEV-Milan" ASK."""
    real = x509.load_pem_x509_certificate(real_pem)
    ask_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    builder = (x509.CertificateBuilder().subject_name(real.subject).issuer_name(real.issuer)
               .public_key(key.public_key()).serial_number(1)
               .not_valid_before(NOW - timedelta(days=1)).not_valid_after(NOW + timedelta(days=1)))
    for ext in real.extensions:
        builder = builder.add_extension(ext.value, ext.critical)
    return builder.sign(ask_key, hashes.SHA384()).public_bytes(serialization.Encoding.PEM)


def _resign(hcl: bytes, key) -> bytes:
    body = hcl[REPORT:REPORT + 0x2A0]
    r, s = decode_dss_signature(key.sign(body, ec.ECDSA(hashes.SHA384())))
    sig = r.to_bytes(72, "little") + s.to_bytes(72, "little")
    return hcl[:REPORT + 0x2A0] + sig + hcl[REPORT + 0x2A0 + len(sig):]


def test_report_signed_by_a_vcek_that_amd_did_not_issue(milan):
    key = ec.generate_private_key(ec.SECP384R1())
    table = rows(milan.evidence(hcl=_resign(milan.hcl, key), chain=milan.chain(_forged_vcek(milan.vcek_pem, key))),
                 milan.ak)
    assert table["snp signature"].result == "ok"
    assert failed(table) == {"ak", "snp vcek chain"}


def test_out_of_range_signature_values(milan):
    sig_at = REPORT + 0x2A0
    for fill in (b"\xff" * 144, bytes(144)):
        tampered = milan.hcl[:sig_at] + fill + milan.hcl[sig_at + 144:]
        assert failed(rows(milan.evidence(hcl=tampered), milan.ak)) == {"ak", "snp signature"}


def _set_u32(hcl: bytes, offset: int, value: int) -> bytes:
    return hcl[:offset] + struct.pack("<I", value) + hcl[offset + 4:]


def test_debug_policy_bit_set(milan):
    policy = struct.unpack_from("<Q", milan.hcl, REPORT + 0x08)[0] | cvm.POLICY_DEBUG
    tampered = milan.hcl[:REPORT + 8] + struct.pack("<Q", policy) + milan.hcl[REPORT + 16:]
    assert failed(rows(milan.evidence(hcl=tampered), milan.ak)) == {"ak", "snp signature", "snp debug"}
    # the same report re-signed by a (forged) VCEK: only the policy rows and the chain speak
    key = ec.generate_private_key(ec.SECP384R1())
    ev = milan.evidence(hcl=_resign(tampered, key), chain=milan.chain(_forged_vcek(milan.vcek_pem, key)))
    assert failed(rows(ev, milan.ak)) == {"ak", "snp vcek chain", "snp debug"}
    assert "snp debug" not in failed(rows(ev, milan.ak, policy=cvm.SnpPolicy(allow_debug=True)))


def test_vmpl_changed(milan):
    tampered = _set_u32(milan.hcl, REPORT + 0x30, 1)
    assert failed(rows(milan.evidence(hcl=tampered), milan.ak)) == {"ak", "snp signature", "snp vmpl"}
    # a client that expects another VMPL rejects the genuine report on that row alone
    assert failed(rows(milan.evidence(), milan.ak, policy=cvm.SnpPolicy(vmpl=2))) == {"ak", "snp vmpl"}


def test_tcb_below_the_minimum(milan):
    stricter = replace(cvm.SnpPolicy(), min_tcb_milan=cvm.Tcb(bootloader=4, tee=0, snp=25, microcode=219))
    table = rows(milan.evidence(), milan.ak, policy=stricter)
    assert failed(table) == {"ak", "snp tcb"}
    assert table["snp tcb"].actual == "bl=4 tee=0 snp=24 ucode=219"
    # a report claiming an older TCB than its VCEK was made for
    lowered = bytearray(milan.hcl)
    lowered[REPORT + 0x180 + 7] -= 1  # microcode SPL
    assert failed(rows(milan.evidence(hcl=bytes(lowered)), milan.ak)) == {"ak", "snp signature", "snp vcek tcb",
                                                                           "snp tcb"}


def test_ak_differing_from_hclakpub(milan):
    other = Capture("genoa").ak  # a real vTPM AK, of another VM
    table = rows(milan.evidence(), other)
    assert failed(table) == {"ak", "snp HCLAkPub"}
    assert failed(rows(milan.evidence(), ec.generate_private_key(ec.SECP256R1()).public_key())) == {"ak",
                                                                                                     "snp HCLAkPub"}


def test_ak_key_as_pem_bytes(milan):
    pem = milan.ak.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert not failed(rows(milan.evidence(), pem))


def test_expired_chain_fails(milan):
    assert failed(rows(milan.evidence(), milan.ak, now=datetime(2033, 1, 1, tzinfo=timezone.utc))) == {
        "ak", "snp vcek chain"}


def test_missing_pieces_fail_the_ak_row(milan):
    for field in ("hcl_report", "vcek_chain"):
        out = cvm.check_ak(replace(milan.evidence(), **{field: None}), milan.ak, now=NOW)
        assert out[0].check == "ak" and out[0].failed and field in out[0].actual


# ---------------------------------------------------------------------------- malformed input

@pytest.mark.parametrize("mutate, field", [
    (lambda h: h[:1000], "truncated"),
    (lambda h: b"XCLA" + h[4:], "HCLA"),
    (lambda h: h + bytes(20000), "at most"),
    (lambda h: _set_u32(h, cvm.HCL_HEADER + cvm.SNP_REPORT + 8, 4), "TDX"),
    (lambda h: _set_u32(h, cvm.HCL_HEADER + cvm.SNP_REPORT + 12, 9), "hash type"),
    (lambda h: _set_u32(h, cvm.HCL_HEADER + cvm.SNP_REPORT + 16, 5000), "does not fit"),
    (lambda h: _set_u32(h, cvm.HCL_HEADER, 99), "version"),
    (lambda h: h[:RUNTIME] + b"\xff" * 1110 + h[RUNTIME + 1110:], "not UTF-8 JSON"),
    (lambda h: "a string", "expected bytes"),
    (lambda h: h[:RUNTIME] + b'{"keys": ' + b"9" * 1101 + h[RUNTIME + 1110:], "not UTF-8 JSON"),
])
def test_bad_hcl_report(milan, mutate, field):
    with pytest.raises(BadInput, match=field) as e:
        cvm.check_ak(milan.evidence(hcl=mutate(milan.hcl)), milan.ak, now=NOW)
    assert e.value.where == "evidence: hcl_report"


@pytest.mark.parametrize("chain, match", [
    (b"-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n", "not PEM"),
    ("-----BEGIN CERTIFICATE-----", "expected PEM bytes"),
    (b"x" * 70000, "at most"),
])
def test_bad_vcek_chain(milan, chain, match):
    with pytest.raises(BadInput, match=match) as e:
        cvm.check_ak(milan.evidence(chain=chain), milan.ak, now=NOW)
    assert e.value.where == "evidence: vcek_chain"


def test_bad_arguments(milan):
    with pytest.raises(BadInput, match="ak_key"):
        cvm.check_ak(milan.evidence(), 42, now=NOW)
    with pytest.raises(BadInput, match="ak_key"):
        cvm.check_ak(milan.evidence(), b"not a key", now=NOW)
    with pytest.raises(BadInput, match="now"):
        cvm.check_ak(milan.evidence(), milan.ak, now=datetime(2026, 1, 1))
    with pytest.raises(BadInput, match="policy"):
        cvm.check_ak(milan.evidence(), milan.ak, now=NOW, policy={"vmpl": 0})
    with pytest.raises(BadInput, match="evidence"):
        cvm.check_ak({"platform": "azure-cvm"}, milan.ak, now=NOW)
    with pytest.raises(BadInput, match="vmpl"):
        cvm.SnpPolicy(vmpl=7)
    with pytest.raises(BadInput, match="min_tcb_genoa"):
        cvm.SnpPolicy(min_tcb_genoa=(10, 0, 23, 84))


def test_random_corruption_is_rows_or_badinput(milan):
    """Random byte damage and truncation anywhere: a table of rows (never ok) or a BadInput."""
    rng = random.Random(20261128)
    for _ in range(300):
        data = bytearray(milan.hcl)
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(cvm.HCL_HEADER + cvm.SNP_REPORT + 60)] = rng.randrange(256)
        if rng.random() < 0.3:
            del data[rng.randrange(len(data)):]
        if bytes(data) == milan.hcl:
            continue
        try:
            out = cvm.check_ak(milan.evidence(hcl=bytes(data)), milan.ak, now=NOW)
        except BadInput:
            continue
        ak_row = out[0]
        assert ak_row.check == "ak"
        # damage outside the signed part and the runtime data (reserved bytes, header) may still verify
        if bytes(data[cvm.HCL_HEADER:cvm.HCL_HEADER + 0x2A0]) != milan.hcl[cvm.HCL_HEADER:cvm.HCL_HEADER + 0x2A0]:
            assert ak_row.failed


# ---------------------------------------------------------------------------- the paravisor (issue 19)
#
# The attack: a plain SNP guest (or a self-built paravisor) on a genuine EPYC asks its chip for a
# report whose report_data is sha256 of runtime data naming a SOFTWARE AK. AMD's roots cannot be
# forged here, so a test ARK → ASK → VCEK stands in for them, supplied the documented way
# (SnpPolicy(amd_roots=…)); everything in the report is then right except which firmware it is.

def _cert(subject: str, issuer_name: x509.Name, public_key, signing_key, *, ca: bool,
          extensions=()) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, subject)])
    builder = (x509.CertificateBuilder().subject_name(name).issuer_name(issuer_name).public_key(public_key)
               .serial_number(x509.random_serial_number())
               .not_valid_before(NOW - timedelta(days=1)).not_valid_after(NOW + timedelta(days=3650)))
    if ca:
        builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
    for ext in extensions:
        builder = builder.add_extension(ext.value, ext.critical)
    return builder.sign(signing_key, hashes.SHA384())


def _pem_key(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def sha1_signed_ca(folder: Path, subject: str, key, issuer: x509.Certificate, issuer_key) -> x509.Certificate:
    """A CA certificate signed with SHA-1 by openssl (cryptography refuses to make one)."""
    need("openssl")
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, subject)])).sign(key, hashes.SHA256()))
    files = {"csr.pem": csr.public_bytes(serialization.Encoding.PEM), "ca.pem": issuer.public_bytes(
        serialization.Encoding.PEM), "ca.key": _pem_key(issuer_key), "ext.cnf": b"basicConstraints=critical,CA:TRUE\n"}
    for name, data in files.items():
        (folder / name).write_bytes(data)
    subprocess.run(["openssl", "x509", "-req", "-sha1", "-in", "csr.pem", "-CA", "ca.pem", "-CAkey", "ca.key",
                    "-set_serial", "7", "-days", "400", "-extfile", "ext.cnf", "-out", "out.pem"],
                   cwd=folder, check=True, capture_output=True)
    cert = x509.load_pem_x509_certificate((folder / "out.pem").read_bytes())
    assert cert.signature_hash_algorithm.name == "sha1"
    return cert


class StandInAmd:
    """ARK-Milan → SEV-Milan → a VCEK with the real Milan VCEK's SPL and hwID extensions, all ours."""

    def __init__(self, real_vcek_pem: bytes, sha1_ask_in: Path | None = None):
        ark_key, ask_key = (rsa.generate_private_key(public_exponent=65537, key_size=2048) for _ in range(2))
        self.vcek_key = ec.generate_private_key(ec.SECP384R1())
        ark_name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "ARK-Milan")])
        self.ark = _cert("ARK-Milan", ark_name, ark_key.public_key(), ark_key, ca=True)
        self.ask = (sha1_signed_ca(sha1_ask_in, "SEV-Milan", ask_key, self.ark, ark_key) if sha1_ask_in
                    else _cert("SEV-Milan", ark_name, ask_key.public_key(), ark_key, ca=True))
        real = x509.load_pem_x509_certificate(real_vcek_pem)
        vcek = _cert("SEV-VCEK", self.ask.subject, self.vcek_key.public_key(), ask_key, ca=False,
                     extensions=list(real.extensions))
        self.chain = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in (vcek, self.ask, self.ark))
        self.roots = (cvm.Product("Milan", self.ark, self.ask),)

    def policy(self, **kw) -> cvm.SnpPolicy:
        return cvm.SnpPolicy(amd_roots=self.roots, **kw)


def _b64url_of(n: int) -> str:
    return base64.urlsafe_b64encode(n.to_bytes((n.bit_length() + 7) // 8, "big")).rstrip(b"=").decode()


def forge_hcl(template: bytes, ak, vcek_key, *, id_key: bytes, report_data_tail: bytes = bytes(32),
              policy: int | None = None, flags: int | None = None, author_key: bytes | None = None) -> bytes:
    """An HCL report of a guest that is not Azure's paravisor: runtime data naming `ak`, report_data
    = sha256(runtime data) + `report_data_tail`, the given ID key digest, signed by `vcek_key`."""
    numbers = ak.public_numbers()
    runtime = json.dumps({"keys": [{"kid": "HCLAkPub", "key_ops": ["sign"], "kty": "RSA",
                                    "e": _b64url_of(numbers.e), "n": _b64url_of(numbers.n)}]}).encode()
    report = bytearray(template[REPORT:REPORT + cvm.SNP_REPORT])
    report[0x50:0x90] = hashlib.sha256(runtime).digest() + report_data_tail
    report[0xE0:0x110] = id_key
    if policy is not None:
        report[0x08:0x10] = struct.pack("<Q", policy)
    if flags is not None:
        report[0x48:0x4C] = struct.pack("<I", flags)
    if author_key is not None:
        report[0x110:0x140] = author_key
    r, s = decode_dss_signature(vcek_key.sign(bytes(report[:0x2A0]), ec.ECDSA(hashes.SHA384())))
    report[0x2A0:0x2A0 + 144] = r.to_bytes(72, "little") + s.to_bytes(72, "little")
    igvm = struct.pack("<IIIII", cvm.IGVM_HEADER + len(runtime), 1, cvm.SNP_REPORT_TYPE, 1, len(runtime))
    return template[:REPORT] + bytes(report) + igvm + runtime


@pytest.fixture(scope="module")
def amd(milan) -> StandInAmd:
    return StandInAmd(milan.vcek_pem)


@pytest.fixture(scope="module")
def software_ak():
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _attack(milan, amd, software_ak, **kw) -> Evidence:
    id_key = kw.pop("id_key", hashlib.sha384(b"the attacker's own ID key").digest())
    return milan.evidence(hcl=forge_hcl(milan.hcl, software_ak.public_key(), amd.vcek_key, id_key=id_key, **kw),
                          chain=amd.chain)


def test_any_snp_guest_is_not_azures_paravisor(milan, amd, software_ak):
    """The attack of issue 19: genuine-looking in every respect but the firmware's ID key."""
    for id_key in (hashlib.sha384(b"the attacker's own ID key").digest(), bytes(48)):  # own ID block, or none
        table = rows(_attack(milan, amd, software_ak, id_key=id_key), software_ak.public_key(), policy=amd.policy())
        assert failed(table) == {"ak", "snp id key"}, table
        assert table["snp id key"].actual == id_key.hex()


def test_the_forgery_is_otherwise_complete(milan, amd, software_ak):
    """Control: with the forger's ID key allowed, the same evidence verifies, so the ID key row
    alone stopped the test above (and the stand-in roots are really used)."""
    digest = hashlib.sha384(b"the attacker's own ID key").hexdigest()
    table = rows(_attack(milan, amd, software_ak), software_ak.public_key(),
                 policy=amd.policy(id_key_digests=(digest,)))
    assert not failed(table), table
    # with AMD's real roots the stand-in chain is not AMD's
    assert "snp vcek chain" in failed(rows(_attack(milan, amd, software_ak), software_ak.public_key()))


def test_a_new_id_key_in_warn_mode_reports_without_failing(milan, amd, software_ak):
    table = rows(_attack(milan, amd, software_ak), software_ak.public_key(), policy=amd.policy(id_key_policy="warn"))
    assert table["snp id key"].result == "warn" and not failed(table)


def test_report_data_second_half_must_be_zero(milan, amd, software_ak):
    ev = milan.evidence(hcl=forge_hcl(milan.hcl, software_ak.public_key(), amd.vcek_key,
                                      id_key=bytes.fromhex(cvm.AZURE_ID_KEY_DIGESTS[0]),
                                      report_data_tail=b"\x01" + bytes(31)), chain=amd.chain)
    table = rows(ev, software_ak.public_key(), policy=amd.policy())
    assert failed(table) == {"ak", "snp report_data"}


def test_guest_policy_bits(milan, amd, software_ak):
    azure = bytes.fromhex(cvm.AZURE_ID_KEY_DIGESTS[0])
    genuine_policy = struct.unpack_from("<Q", milan.hcl, REPORT + 0x08)[0]
    assert genuine_policy & cvm.POLICY_SMT and not genuine_policy & cvm.POLICY_MIGRATE_MA  # Azure's: SMT on, no MA
    ev = _attack(milan, amd, software_ak, id_key=azure, policy=genuine_policy | cvm.POLICY_MIGRATE_MA)
    assert failed(rows(ev, software_ak.public_key(), policy=amd.policy())) == {"ak", "snp guest policy"}
    assert not failed(rows(ev, software_ak.public_key(), policy=amd.policy(allow_migration_agent=True)))
    # a client that refuses SMT refuses every Azure CVM
    assert failed(rows(milan.evidence(), milan.ak, policy=cvm.SnpPolicy(allow_smt=False))) == {"ak", "snp guest policy"}


def test_author_key(milan, amd, software_ak):
    azure = bytes.fromhex(cvm.AZURE_ID_KEY_DIGESTS[0])
    author = hashlib.sha384(b"an author key").digest()
    ev = _attack(milan, amd, software_ak, id_key=azure, flags=cvm.FLAG_AUTHOR_KEY_EN, author_key=author)
    assert failed(rows(ev, software_ak.public_key(), policy=amd.policy())) == {"ak", "snp author key"}
    assert not failed(rows(ev, software_ak.public_key(), policy=amd.policy(author_key_digests=(author.hex(),))))
    # a digest without AUTHOR_KEY_EN is not what the firmware writes
    ev = _attack(milan, amd, software_ak, id_key=azure, author_key=author)
    assert failed(rows(ev, software_ak.public_key(), policy=amd.policy())) == {"ak", "snp author key"}


def test_report_not_signed_by_a_vcek(milan, amd, software_ak):
    azure = bytes.fromhex(cvm.AZURE_ID_KEY_DIGESTS[0])
    for flags in (1 << 2, 7 << 2, cvm.FLAG_MASK_CHIP_KEY):  # VLEK, no key, masked chip key
        ev = _attack(milan, amd, software_ak, id_key=azure, flags=flags)
        assert failed(rows(ev, software_ak.public_key(), policy=amd.policy())) == {"ak", "snp signature"}


def test_measurement_allow_list(milan):
    measurement = milan.hcl[REPORT + 0x90:REPORT + 0xC0].hex()
    assert rows(milan.evidence(), milan.ak)["snp measurement"].policy == "info"
    assert not failed(rows(milan.evidence(), milan.ak, policy=cvm.SnpPolicy(measurements=(measurement,))))
    other = hashlib.sha384(b"another paravisor build").hexdigest()
    assert failed(rows(milan.evidence(), milan.ak, policy=cvm.SnpPolicy(measurements=(other,)))) == {
        "ak", "snp measurement"}


def test_sha1_anywhere_in_the_vcek_chain_is_refused(milan, software_ak, tmp_path):
    weak = StandInAmd(milan.vcek_pem, sha1_ask_in=tmp_path)
    azure = bytes.fromhex(cvm.AZURE_ID_KEY_DIGESTS[0])
    ev = milan.evidence(hcl=forge_hcl(milan.hcl, software_ak.public_key(), weak.vcek_key, id_key=azure),
                        chain=weak.chain)
    table = rows(ev, software_ak.public_key(), policy=weak.policy())
    assert failed(table) == {"ak", "snp vcek chain"}
    assert "SHA1" in table["snp vcek chain"].actual


def test_policy_json_adds_or_replaces_id_keys(tmp_path):
    new = hashlib.sha384(b"a new paravisor key").hexdigest()
    added = cvm.SnpPolicy.from_json({"extra_id_key_digests": [new]})
    assert added.id_key_digests == (*cvm.AZURE_ID_KEY_DIGESTS, new)
    assert cvm.SnpPolicy.from_json({"id_key_digests": [new]}).id_key_digests == (new,)
    full = cvm.SnpPolicy.from_json({"id_key_policy": "warn", "measurements": [new], "author_key_digests": [new],
                                    "allow_smt": False, "allow_migration_agent": True})
    assert (full.id_key_policy, full.measurements, full.allow_smt) == ("warn", (new,), False)
    for bad, field in (({"id_key_digests": [new.upper()]}, "id_key_digests"),
                       ({"id_key_digests": [new + "\n"]}, "id_key_digests"),
                       ({"extra_id_key_digests": new}, "extra_id_key_digests"),
                       ({"id_key_policy": "off"}, "id_key_policy"),
                       ({"allow_smt": 1}, "allow_smt"),
                       ({"amd_roots": []}, "unknown field")):
        with pytest.raises(BadInput, match=field) as e:
            cvm.SnpPolicy.from_json(bad, "p.json")
        assert e.value.where == "p.json"


def test_sha1_is_refused_client_wide(tmp_path):
    """Every chain the client checks (qemu's EK CA, Trusted Launch, the TLS certificate) refuses a
    SHA-1 signature, with a reason that says so (not a vague "not signed by")."""
    from mithril_client import certs
    from mithril_client.platforms import azure_trusted_launch as tl
    from mithril_client.session import tls_row

    root_key, leaf_key = (rsa.generate_private_key(public_exponent=65537, key_size=2048) for _ in range(2))
    root_name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "test root")])
    root = _cert("test root", root_name, root_key.public_key(), root_key, ca=True)
    weak = sha1_signed_ca(tmp_path, "weak intermediate", leaf_key, root, root_key)
    assert certs.weak_signature(weak) == "weak intermediate is signed with SHA1, which is refused"
    assert not certs.issued_by(weak, root)
    ok, why = certs.chain_to_anchor(weak, [], [root], datetime.now(timezone.utc))
    assert not ok and "SHA1" in why
    path, why = tl.verify_chain(weak, [], NOW, lambda url: b"")
    assert path is None
    row = tls_row(weak.public_bytes(serialization.Encoding.DER), root.public_bytes(serialization.Encoding.PEM))
    assert row.failed
