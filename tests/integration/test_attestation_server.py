"""The attestation server on a real swtpm, run the way the image runs it: Debian's /usr/bin/python3
with Debian's python3-cryptography 38 and nothing else.

The expected values come from outside the server: tpm2_checkquote verifies its quotes,
tpm2_pcrread reads the PCRs, tpm2_nvread the EK certificate, openssl verifies that certificate
against this test's own swtpm-localca CA, tpm2_createprimary / tpm2_readpublic give the keys the
templates must produce, and tpm2_makecredential makes the credentials the server must activate.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import json
import os
import struct
import subprocess
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from attestation_server.tpm import EK_TEMPLATE, RH_ENDORSEMENT, Tpm
from mithril_client import tpm2
from mithril_client.evidence import parse_evidence
from pipeline import run as runner
from pipeline.errors import ToolFailed
from pipeline import swtpm
from pipeline.swtpm import Swtpm
from tests.stack import AttestationServer
from tests.conftest import need

DEBIAN_PYTHON = "/usr/bin/python3"
NONCE = bytes(range(32))
QUOTED = "sha256:" + ",".join(str(i) for i in range(16))
OWNER = (4242, 4343) if os.geteuid() == 0 else (os.getuid(), os.getgid())
AK_ATTRIBUTES = "fixedtpm|fixedparent|sensitivedataorigin|userwithauth|noda|restricted|sign"
START_TIMEOUT = 120.0  # a guard against a hung start, not a speed check


def b64(text: str) -> bytes:
    return base64.b64decode(text)


def need_tools() -> None:
    need("swtpm", "swtpm_setup", "/usr/bin/swtpm_localca", "tpm2_startup", "tpm2_pcrread", "tpm2_nvread",
         "tpm2_checkquote", "tpm2_makecredential", "tpm2_createprimary", "tpm2_readpublic", "tpm2_getcap",
         "openssl", DEBIAN_PYTHON)
    probe = subprocess.run([DEBIAN_PYTHON, "-c", "import cryptography"], capture_output=True, check=False)
    if probe.returncode:
        pytest.skip("needs Debian's python3-cryptography for /usr/bin/python3 (installed by scripts/setup.sh)")


def manufacture(work: Path) -> tuple[Path, Path]:
    """A TPM with an EK certificate from this test's own swtpm-localca: (TPM state, CA folder)."""
    swtpm.manufacture(work / "tpm", work / "localca")
    return work / "tpm", work / "localca"


def pcr(tpm: Swtpm, work: Path, index: int) -> bytes:
    out = work / f"pcr{index}.bin"
    tpm.tool(["tpm2_pcrread", f"sha256:{index}", "-o", out])
    return out.read_bytes()


def Server(tpm: Swtpm, work: Path, *extra: str, platform: str = "qemu") -> AttestationServer:
    return AttestationServer(f"swtpm:{tpm.socket}", work, *extra, platform=platform)


@dataclass
class Lab:
    work: Path
    tpm: Swtpm
    localca: Path
    server: Server
    pcr15_before: bytes


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """swtpm_setup'd TPM (EK at 0x81010001, certificate in NV 0x01C00002) + the server on it."""
    need_tools()
    work = tmp_path_factory.mktemp("attestation")
    state, localca = manufacture(work)
    tpm = Swtpm(state, for_qemu=False).start()
    try:
        tpm.tool(["tpm2_startup", "-c"])
        before = pcr(tpm, work, 15)
        server = Server(tpm, work, "--tls-owner", f"{OWNER[0]}:{OWNER[1]}").start()
        yield Lab(work, tpm, localca, server, before)
        server.stop()
    finally:
        tpm.stop()


def ak_name(ak_public: bytes) -> bytes:
    """nameAlg ‖ H_nameAlg(TPMT_PUBLIC) (TPM 2.0 Part 1, 16 Names); TPM2B_PUBLIC = size ‖ TPMT_PUBLIC."""
    name_alg = ak_public[4:6]
    assert name_alg == b"\x00\x0b", "the AK's nameAlg is sha256"
    return name_alg + hashlib.sha256(ak_public[2:]).digest()


def make_credential(tpm: Swtpm, work: Path, name: bytes, secret: bytes, ek_pub: Path) -> tuple[bytes, bytes]:
    """tpm2_makecredential without a TPM; its file: magic 0xBADCC0DE, version 1, TPM2B_ID_OBJECT,
    TPM2B_ENCRYPTED_SECRET (big-endian sizes). Returns the two TPM2Bs."""
    (work / "secret.bin").write_bytes(secret)
    out = work / "credential.out"
    runner.run(["tpm2_makecredential", "-T", "none", "-u", ek_pub, "-s", work / "secret.bin",
                "-n", name.hex(), "-o", out])
    data = out.read_bytes()
    assert struct.unpack(">II", data[:8]) == (0xBADCC0DE, 1)
    size = struct.unpack(">H", data[8:10])[0]
    blob, rest = data[8:10 + size], data[10 + size:]
    assert struct.unpack(">H", rest[:2])[0] == len(rest) - 2
    return blob, rest


def tpm2_tools_pcr_file(values: list[bytes]) -> bytes:
    """sha256 PCRs 0-15 in tpm2-tools' 'serialized' PCR file (tpm2_quote -o): little-endian C structs,
    TPML_PCR_SELECTION (u32 count, 16 x {u16 hash, u8 sizeofSelect, u8 pcrSelect[4], pad}), u32
    count, then TPML_DIGESTs of 8 (u32 count, 8 x {u16 size, u8 buffer[64]}). Byte-identical to
    tpm2_quote -o here; tpm2_checkquote 5.4 fails on a plain values file of 16 PCRs ("Failed to
    hash PCR values related to quote")."""
    selection = struct.pack("<I", 1) + struct.pack("<HB4sx", 0x000B, 3, b"\xff\xff\x00\x00") + bytes(8 * 15)
    lists = [struct.pack("<I", len(chunk)) + b"".join(struct.pack("<H", len(v)) + v.ljust(64, b"\0") for v in chunk)
             + bytes(66 * (8 - len(chunk))) for chunk in (values[:8], values[8:])]
    return selection + struct.pack("<I", len(lists)) + b"".join(lists)


def check_quote_with_tpm2_tools(doc: dict, work: Path, nonce: bytes = NONCE) -> None:
    work.mkdir(exist_ok=True)
    values = [bytes.fromhex(doc["pcrs"]["sha256"][str(i)]) for i in range(16)]
    files = {"ak.pem": doc["ak_pub"].encode(), "quote.msg": b64(doc["quote"]), "quote.sig": b64(doc["signature"]),
             "quote.pcrs": tpm2_tools_pcr_file(values)}
    for name, data in files.items():
        (work / name).write_bytes(data)
    argv = ["tpm2_checkquote", "-u", work / "ak.pem", "-m", work / "quote.msg", "-s", work / "quote.sig",
            "-f", work / "quote.pcrs", "-g", "sha256"]
    runner.run([*argv, "-q", nonce.hex()])
    with pytest.raises(ToolFailed):  # the oracle does check the nonce
        runner.run([*argv, "-q", bytes(len(nonce)).hex()])


# ---------------------------------------------------------------------------- quote and keys

def test_quote_verifies_with_tpm2_checkquote(lab):
    doc = lab.server.evidence()
    check_quote_with_tpm2_tools(doc, lab.work / "checkquote")
    # the served values are the TPM's, as tpm2_pcrread reads them
    out = lab.work / "pcrs-now.bin"
    lab.tpm.tool(["tpm2_pcrread", QUOTED, "-o", out])
    assert out.read_bytes() == b"".join(bytes.fromhex(doc["pcrs"]["sha256"][str(i)]) for i in range(16))


def test_quote_verifies_with_mithril_client(lab):
    doc = lab.server.evidence()
    ev = parse_evidence(json.dumps(doc))  # the client's own parser takes the document
    assert (ev.platform, ev.nonce) == ("qemu", NONCE)
    quote, sig = tpm2.parse_quote(ev.quote), tpm2.parse_signature(ev.signature)
    key = tpm2.load_ak(ev.ak_public)
    assert key.public_numbers() == tpm2.load_ak(ev.ak_pub).public_numbers()
    assert (sig.scheme, sig.hash) == ("ecdsa", "sha256")
    assert tpm2.signature_valid(quote, sig, key)
    assert quote.extra_data == NONCE
    assert quote.selections == (tpm2.PcrSelection("sha256", tuple(range(16))),)
    assert tpm2.pcr_digest(quote.selections, ev.pcrs, sig.hash) == quote.pcr_digest


def test_ak_is_the_key_tpm2_createprimary_makes_from_the_template(lab):
    ctx, pub = lab.work / "ak.ctx", lab.work / "ak.tss"
    lab.tpm.tool(["tpm2_createprimary", "-C", "e", "-G", "ecc256:ecdsa-sha256:null", "-g", "sha256",
                  "-a", AK_ATTRIBUTES, "-c", ctx])
    lab.tpm.tool(["tpm2_readpublic", "-c", ctx, "-f", "tss", "-o", pub])
    assert b64(lab.server.evidence()["ak_public"]) == pub.read_bytes()
    # the same AK on every request: primary keys are derived from the seed and the template
    assert lab.server.evidence(bytes(16))["ak_public"] == lab.server.evidence(bytes(64))["ak_public"]


def test_ek_template_gives_the_ek_swtpm_setup_made(lab):
    """EK_TEMPLATE (TCG L-1) is the fallback when 0x81010001 is empty; swtpm_setup made that EK
    from the same profile, so CreatePrimary must give the very same key."""
    ek_pub = lab.work / "ek.pub"
    lab.tpm.tool(["tpm2_readpublic", "-c", "0x81010001", "-o", ek_pub])
    with Tpm(f"swtpm:{lab.tpm.socket}") as t:
        assert t.create_primary(RH_ENDORSEMENT, EK_TEMPLATE).public == ek_pub.read_bytes()


def test_ek_certificate(lab):
    doc = lab.server.evidence()
    der, ek_pem = lab.work / "ek.der", lab.work / "ek-key.pem"
    lab.tpm.tool(["tpm2_nvread", "0x1c00002", "-o", der])
    cert = x509.load_pem_x509_certificate(doc["ek_cert"].encode())
    assert cert.public_bytes(serialization.Encoding.DER) == der.read_bytes()
    (lab.work / "ek-cert.pem").write_text(doc["ek_cert"])
    runner.run(["openssl", "verify", "-CAfile", lab.localca / "swtpm-localca-rootca-cert.pem",
                "-untrusted", lab.localca / "issuercert.pem", lab.work / "ek-cert.pem"])
    # it certifies this TPM's EK
    lab.tpm.tool(["tpm2_readpublic", "-c", "0x81010001", "-f", "pem", "-o", ek_pem])
    ek = serialization.load_pem_public_key(ek_pem.read_bytes())
    assert cert.public_key().public_numbers() == ek.public_numbers()


def test_pcr15_measures_the_served_ca(lab):
    doc = lab.server.evidence()
    expected = hashlib.sha256(lab.pcr15_before + hashlib.sha256(doc["tls_ca"].encode()).digest()).digest()
    assert pcr(lab.tpm, lab.work, 15) == expected
    assert doc["pcrs"]["sha256"]["15"] == expected.hex()


# ---------------------------------------------------------------------------- credential activation

def test_credential_activation(lab):
    doc = lab.server.evidence()
    ek_pub = lab.work / "ek.pub"
    lab.tpm.tool(["tpm2_readpublic", "-c", "0x81010001", "-o", ek_pub])
    secret = os.urandom(32)
    status, answer = lab.server.activate(*make_credential(lab.tpm, lab.work, ak_name(b64(doc["ak_public"])),
                                                           secret, ek_pub))
    assert status == 200, answer
    assert b64(answer["credential"]) == secret


def test_credential_for_another_ak_is_refused(lab):
    ek_pub = lab.work / "ek.pub"
    lab.tpm.tool(["tpm2_readpublic", "-c", "0x81010001", "-o", ek_pub])
    other = b"\x00\x0b" + os.urandom(32)
    status, answer = lab.server.activate(*make_credential(lab.tpm, lab.work, other, os.urandom(32), ek_pub))
    assert status in (400, 500) and "error" in answer
    assert lab.server.alive()
    lab.server.evidence()


def test_no_tpm_handles_left_behind(lab):
    lab.server.evidence()
    for kind in ("handles-transient", "handles-loaded-session"):
        out = lab.tpm.tool(["tpm2_getcap", kind]).text
        assert out.strip() == "", f"{kind}: {out}"


# ---------------------------------------------------------------------------- bad requests

@pytest.mark.parametrize("query", [
    "", "?nonce=", "?nonce=abc", "?nonce=" + "zz" * 16, "?nonce=" + "00" * 15, "?nonce=" + "00" * 65,
    "?nonce=" + "00" * 16 + "&nonce=" + "00" * 16, "?nonce=%20" + "00" * 16, "?nonce=0x" + "00" * 16,
    # a trailing newline passed `re.match(r"…$")` and reached bytes.fromhex (500): issue 19
    "?nonce=" + "0" * 63 + "%0A", "?nonce=" + "00" * 16 + "%0A", "?nonce=" + "%EF%BC%91" * 32,
])
def test_bad_nonces(lab, query):
    status, doc, _ = lab.server.request("GET", "/attestation" + query)
    assert status == 400 and isinstance(doc["error"], str)
    assert lab.server.alive()


@pytest.mark.parametrize("method, path, body, headers, status", [
    ("GET", "/", None, {}, 404),
    ("GET", "/attestation/", None, {}, 404),
    ("POST", "/attestation", b"{}", {}, 405),
    ("DELETE", "/attestation", None, {}, 405),
    ("GET", "/attestation/activate", None, {}, 405),
    ("POST", "/attestation/activate", b"", {"Content-Length": "1000000"}, 413),
    ("POST", "/attestation/activate", b"", {"Content-Length": "²"}, 411),  # "²".isdigit(), int("²") raises
    ("POST", "/attestation/activate", b"", {}, 400),
    ("POST", "/attestation/activate", b"{not json", {}, 400),
    ("POST", "/attestation/activate", b"[1, 2]", {}, 400),
    ("POST", "/attestation/activate", b'{"credential_blob": "AAA=", "secret": "AAA="}', {}, 400),
    ("POST", "/attestation/activate", b'{"credential_blob": "AAJhYg==", "secret": "!!"}', {}, 400),
    ("POST", "/attestation/activate", b'{"credential_blob": "AAJhYg=="}', {}, 400),
    # well-formed TPM2Bs that are no credential: the TPM refuses a parameter
    ("POST", "/attestation/activate", b'{"credential_blob": "AAJhYg==", "secret": "AAJhYg=="}', {}, 400),
])
def test_bad_requests(lab, method, path, body, headers, status):
    got, doc, resp = lab.server.request(method, path, body, headers)
    assert got == status and isinstance(doc["error"], str), doc
    if status == 405:
        assert resp.getheader("Allow") in ("GET", "POST")
    assert lab.server.alive()


# ---------------------------------------------------------------------------- TLS files and restart

def test_tls_files_for_the_ingress(lab):
    doc = lab.server.evidence()
    tls = lab.work / "tls"
    ca_pem = (tls / "ca.pem").read_bytes()
    assert ca_pem == doc["tls_ca"].encode()
    leaf, ca = x509.load_pem_x509_certificates((tls / "server.pem").read_bytes())
    assert ca.public_bytes(serialization.Encoding.PEM) == ca_pem  # leaf first, then the CA
    (lab.work / "leaf.pem").write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    runner.run(["openssl", "verify", "-purpose", "sslserver", "-CAfile", tls / "ca.pem", lab.work / "leaf.pem"])
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert ca.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign
    assert isinstance(ca.public_key(), ec.EllipticCurvePublicKey) and ca.public_key().curve.name == "secp256r1"
    assert leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.DNSName) == ["mithril"]
    assert ExtendedKeyUsageOID.SERVER_AUTH in leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    key_path = tls / "server.key"
    key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    assert key.public_key().public_numbers() == leaf.public_key().public_numbers()
    st = key_path.stat()
    assert (st.st_mode & 0o777, st.st_uid, st.st_gid) == (0o600, *OWNER)
    assert (lab.work / "state" / "ca.key").stat().st_mode & 0o777 == 0o600


def test_restart_reuses_the_ca_and_extends_pcr15_once(lab):
    ca_pem = lab.server.evidence()["tls_ca"]
    once = hashlib.sha256(lab.pcr15_before + hashlib.sha256(ca_pem.encode()).digest()).digest()
    assert pcr(lab.tpm, lab.work, 15) == once
    lab.server.stop()
    lab.server.start()
    doc = lab.server.evidence()
    assert doc["tls_ca"] == ca_pem
    assert pcr(lab.tpm, lab.work, 15) == once
    assert doc["pcrs"]["sha256"]["15"] == once.hex()
    assert "not extended again" in lab.server.log_text()
    leaf = x509.load_pem_x509_certificates((lab.work / "tls" / "server.pem").read_bytes())[0]
    (lab.work / "leaf2.pem").write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    runner.run(["openssl", "verify", "-CAfile", lab.work / "tls" / "ca.pem", lab.work / "leaf2.pem"])


# ---------------------------------------------------------------------------- a TPM with no EK

def test_tpm_without_persistent_ek_or_certificate(tmp_path):
    """A bare swtpm (what the boot check starts): no EK at 0x81010001, no EK certificate. The
    server makes the EK from the TCG template; `--pcr 14` moves PCR 14 and leaves 15 alone."""
    need_tools()
    tpm = Swtpm(tmp_path / "tpm", for_qemu=False).start()
    server = None
    try:
        tpm.tool(["tpm2_startup", "-c"])
        before14, before15 = pcr(tpm, tmp_path, 14), pcr(tpm, tmp_path, 15)
        server = Server(tpm, tmp_path, "--pcr", "14").start()
        doc = server.evidence()
        assert "ek_cert" not in doc
        check_quote_with_tpm2_tools(doc, tmp_path / "checkquote")
        ca_digest = hashlib.sha256(doc["tls_ca"].encode()).digest()
        assert pcr(tpm, tmp_path, 14) == hashlib.sha256(before14 + ca_digest).digest()
        assert pcr(tpm, tmp_path, 15) == before15
        tpm.tool(["tpm2_createek", "-c", tmp_path / "ek.ctx", "-G", "rsa", "-u", tmp_path / "ek.pub"])
        secret = os.urandom(32)
        status, answer = server.activate(*make_credential(tpm, tmp_path, ak_name(b64(doc["ak_public"])), secret,
                                                          tmp_path / "ek.pub"))
        assert status == 200, answer
        assert b64(answer["credential"]) == secret
    finally:
        if server is not None:
            server.stop()
        tpm.stop()


# ---------------------------------------------------------------------------- Azure, on stand-ins

def stand_in_cert(common_name: str) -> x509.Certificate:
    """A self-signed certificate made here: NOT Azure's AK certificate nor AMD's VCEK chain."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    return (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now)
            .not_valid_after(now + datetime.timedelta(days=1)).sign(key, hashes.SHA256()))


@pytest.fixture(scope="module")
def azure_lab(tmp_path_factory):
    """A swtpm provisioned the way Azure's vTPM presents itself (documented handles and indices),
    with STAND-IN contents: an RSA AK persisted at 0x81000003, a made-up AK certificate zero-padded
    in NV 0x01C101D0 (Azure's index is 4096 bytes; swtpm allows 2048), random bytes as the "HCL
    report" in NV 0x01400001, and a local http.server as IMDS THIM. Checks the server's plumbing,
    not Azure's formats."""
    need_tools()
    need("tpm2_createek", "tpm2_createak", "tpm2_evictcontrol", "tpm2_nvdefine", "tpm2_nvwrite")
    work = tmp_path_factory.mktemp("azure")
    tpm = Swtpm(work / "tpm", for_qemu=False).start()
    thim = None
    try:
        tpm.tool(["tpm2_startup", "-c"])
        tpm.tool(["tpm2_createek", "-c", work / "ek.ctx", "-G", "rsa"])
        tpm.tool(["tpm2_createak", "-C", work / "ek.ctx", "-c", work / "ak.ctx", "-G", "rsa", "-g", "sha256",
                  "-s", "rsassa", "-u", work / "ak.pub"])
        tpm.tool(["tpm2_evictcontrol", "-C", "o", "-c", work / "ak.ctx", "0x81000003"])
        ak_cert = stand_in_cert("AK certificate stand-in").public_bytes(serialization.Encoding.DER)
        hcl = os.urandom(2000)  # two NV_Read chunks (swtpm: 1024 per read, 2048 per index)
        for index, data in (("0x01C101D0", ak_cert + bytes(2048 - len(ak_cert))), ("0x01400001", hcl)):
            (work / "nv.bin").write_bytes(data)
            tpm.tool(["tpm2_nvdefine", index, "-C", "o", "-s", str(len(data)), "-a", "ownerread|ownerwrite"])
            tpm.tool(["tpm2_nvwrite", index, "-C", "o", "-i", work / "nv.bin"])
        vcek, ask, ark = (stand_in_cert(f"{n} stand-in").public_bytes(serialization.Encoding.PEM)
                          for n in ("VCEK", "ASK", "ARK"))
        chain = ask + ark
        answer = json.dumps({"vcekCert": vcek.decode(), "certificateChain": chain.decode()}).encode()

        calls = []

        class Thim(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 -- http.server's name
                calls.append(self.path)
                ok = self.path == "/metadata/THIM/amd/certification" and self.headers.get("Metadata") == "true"
                self.send_response(200 if ok else 400)
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args):
                pass

        thim = HTTPServer(("127.0.0.1", 0), Thim)
        threading.Thread(target=thim.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        url = f"http://127.0.0.1:{thim.server_address[1]}/metadata/THIM/amd/certification"
        yield {"work": work, "tpm": tpm, "ak_cert": ak_cert, "hcl": hcl, "vcek_chain": vcek + chain, "thim": url,
               "thim_calls": calls}
    finally:
        if thim is not None:
            thim.shutdown()
            thim.server_close()
        tpm.stop()


@pytest.mark.parametrize("platform", ["azure-trusted-launch", "azure-cvm"])
def test_azure_evidence_on_stand_ins(azure_lab, platform):
    work: Path = azure_lab["work"] / platform
    work.mkdir()
    server = Server(azure_lab["tpm"], work, "--thim-url", azure_lab["thim"], platform=platform).start()
    try:
        doc = server.evidence()
        ev = parse_evidence(json.dumps(doc))
        assert ev.platform == platform and ev.ek_cert is None
        check_quote_with_tpm2_tools(doc, work / "checkquote")
        azure_lab["tpm"].tool(["tpm2_readpublic", "-c", "0x81000003", "-o", work / "ak.pub"])
        assert ev.ak_public == (work / "ak.pub").read_bytes()
        assert x509.load_pem_x509_certificate(ev.ak_cert).public_bytes(serialization.Encoding.DER) == azure_lab["ak_cert"]
        if platform == "azure-cvm":
            assert ev.hcl_report == azure_lab["hcl"]
            assert ev.vcek_chain == azure_lab["vcek_chain"]
        else:
            assert ev.hcl_report is None and ev.vcek_chain is None
        status, answer, _ = server.request("POST", "/attestation/activate", b"{}")
        assert status == 404, answer  # activation is the qemu path; Azure's AK comes with a certificate
    finally:
        server.stop()


def test_imds_is_asked_once_not_per_request(azure_lab):
    """azure-cvm: the VCEK chain is fetched at start and cached for the report's TCB; clients never
    wait on IMDS, and a flood of GET /attestation is not a flood of IMDS calls."""
    work: Path = azure_lab["work"] / "cached"
    work.mkdir()
    calls = azure_lab["thim_calls"]
    before = len(calls)
    server = Server(azure_lab["tpm"], work, "--thim-url", azure_lab["thim"], platform="azure-cvm").start()
    try:
        assert len(calls) == before + 1  # at start, before the port opened
        for i in range(5):
            doc = server.evidence(bytes([i]) * 32)
            assert doc["vcek_chain"] == azure_lab["vcek_chain"].decode()
        assert len(calls) == before + 1
    finally:
        server.stop()
