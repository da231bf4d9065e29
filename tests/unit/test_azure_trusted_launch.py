"""AK trust on Azure Trusted Launch VMs: a REAL AK certificate and quote captured on an Azure
Trusted Launch VM (tests/fixtures/azure/SOURCES.md), the shipped root and intermediates checked
with openssl, and the chain logic (AIA fetching, CA and EKU rules, another root) on a SYNTHETIC
stand-in chain made here, since no real AK certificate whose issuer is fetched over AIA is public."""

from __future__ import annotations

import base64
import json
import subprocess
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import AuthorityInformationAccessOID, NameOID

from mithril_client import tpm2
from mithril_client.errors import BadInput
from mithril_client.evidence import Evidence
from mithril_client.platforms import azure_trusted_launch as tl
from mithril_client.platforms.choose import check_ak
from mithril_client.tpm2 import TpmPublic
from tests.conftest import need

FIXTURE = Path(__file__).resolve().parent.parent / "fixtures" / "azure" / "trusted-launch" / "aicert-attestation.json"
DATA = Path(tl.__file__).resolve().parent.parent / "data"
NOW = datetime(2025, 1, 1, tzinfo=timezone.utc)  # inside the captured AK certificate's validity
ROOT_SHA256 = "e6c596b17f8ffefba5c300f714cfb1260c6028704ecf7becc4ab5018efb00e95"  # data/SOURCES.md
AIA_URL = "http://pki.example.test/synthetic-ca.crt"


def no_fetch(url: str) -> bytes:
    raise AssertionError(f"unexpected fetch of {url}")


@pytest.fixture(scope="module")
def capture():
    """(AK certificate, quote, TPMT_SIGNATURE) from the AICert example attestation (Trusted Launch VM)."""
    ra = json.loads(FIXTURE.read_text())["remote_attestation"]
    ak_cert = x509.load_der_x509_certificate(base64.b64decode(ra["cert_chain"][0]["base64"]))
    return ak_cert, base64.b64decode(ra["quote"]["message"]["base64"]), base64.b64decode(
        ra["quote"]["signature"]["base64"])


def pem(*certs: x509.Certificate) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


def evidence(ak_cert: bytes | None) -> Evidence:
    return Evidence("azure-trusted-launch", bytes(32), b"", b"", {"sha256": {}}, b"", b"", b"", ak_cert=ak_cert)


def table(ev, key, **kw) -> dict:
    kw.setdefault("now", NOW)
    kw.setdefault("fetch", no_fetch)
    return {r.check: r for r in tl.check_ak(ev, key, **kw)}


def failed(t: dict) -> set[str]:
    return {name for name, r in t.items() if r.failed}


# ---------------------------------------------------------------------------- the real capture

def test_real_capture_verifies(capture):
    ak_cert, quote, sig = capture
    assert tpm2.signature_valid(tpm2.parse_quote(quote), tpm2.parse_signature(sig), ak_cert.public_key()), \
        "the certified key is the key that signed the vTPM quote"
    t = table(evidence(pem(ak_cert)), ak_cert.public_key())
    assert not failed(t), t
    assert t["ak"].actual == "e2806aaec396.TrustedVM.Azure.Microsoft via Global Virtual TPM CA - 01"
    assert set(t) == {"ak", "ak cert chain", "ak cert key"}


def test_dispatcher_picks_the_trusted_launch_check(capture):
    ak = TpmPublic(capture[0].public_key(), "sha256", 0, b"")  # the dispatcher takes the AK's public area
    rows = check_ak(evidence(pem(capture[0])), ak, now=NOW, fetch=no_fetch)
    assert rows[0].check == "ak" and not any(r.failed for r in rows)
    qemu = replace(evidence(None), platform="qemu")
    assert next(r for r in check_ak(qemu, ak) if r.check == "ak").failed


def test_intermediate_in_the_evidence_is_used(capture):
    ca01 = x509.load_pem_x509_certificate((DATA / "azure-vtpm-global-ca-01.pem").read_bytes())
    t = table(evidence(pem(capture[0], ca01)), capture[0].public_key())
    assert not failed(t)


def test_openssl_verifies_the_captured_chain(capture, tmp_path):
    need("openssl")
    (tmp_path / "ak.pem").write_bytes(pem(capture[0]))
    at = str(int(NOW.timestamp()))
    res = subprocess.run(["openssl", "verify", "-attime", at, "-CAfile", DATA / "azure-vtpm-root-2023.pem",
                          "-untrusted", DATA / "azure-vtpm-global-ca-01.pem", tmp_path / "ak.pem"],
                         capture_output=True, text=True, check=False)
    assert res.returncode == 0 and res.stdout.strip().endswith("OK"), res.stdout + res.stderr


@pytest.mark.parametrize("name", ["azure-vtpm-global-ca-01.pem", "azure-vtpm-global-ca-03.pem"])
def test_openssl_verifies_the_shipped_intermediates(name):
    need("openssl")
    at = str(int(datetime(2025, 6, 1, tzinfo=timezone.utc).timestamp()))  # both valid then
    res = subprocess.run(["openssl", "verify", "-attime", at, "-CAfile", DATA / "azure-vtpm-root-2023.pem",
                          DATA / name], capture_output=True, text=True, check=False)
    assert res.returncode == 0, res.stdout + res.stderr


def test_the_shipped_root(tmp_path):
    need("openssl")
    root = tl.ROOT
    assert root.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == \
        "Azure Virtual TPM Root Certificate Authority 2023"
    assert root.subject == root.issuer and tl.certs.issued_by(root, root)
    assert root.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert (root.not_valid_before_utc.year, root.not_valid_after_utc.year) == (2023, 2048)
    out = subprocess.run(["openssl", "x509", "-in", DATA / "azure-vtpm-root-2023.pem", "-noout", "-fingerprint",
                          "-sha256", "-subject"], capture_output=True, text=True, check=True).stdout
    assert out.split("=", 1)[1].splitlines()[0].replace(":", "").lower() == ROOT_SHA256
    assert "CN = Azure Virtual TPM Root Certificate Authority 2023" in out
    assert ROOT_SHA256 in (DATA / "SOURCES.md").read_text()


def test_expired_or_not_yet_valid(capture):
    ak_cert = capture[0]
    t = table(evidence(pem(ak_cert)), ak_cert.public_key(), now=datetime(2026, 11, 28, tzinfo=timezone.utc))
    assert failed(t) == {"ak", "ak cert chain"} and "expired" in t["ak cert chain"].actual
    t = table(evidence(pem(ak_cert)), ak_cert.public_key(), now=datetime(2024, 1, 1, tzinfo=timezone.utc))
    assert failed(t) == {"ak", "ak cert chain"} and "not valid before" in t["ak cert chain"].actual


def test_ak_differing_from_the_certificate(capture):
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
    assert failed(table(evidence(pem(capture[0])), other)) == {"ak", "ak cert key"}


def test_missing_ak_cert():
    t = table(evidence(None), ec.generate_private_key(ec.SECP256R1()).public_key())
    assert t["ak"].failed and t["ak cert chain"].result == "missing"


# ---------------------------------------------------------------------------- synthetic stand-in chains

def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _cert(subject: str, issuer: str, key, signer, *, ca: bool, aia: str | None = None,
          eku=(x509.ObjectIdentifier("2.23.133.8.3"),)) -> x509.Certificate:
    b = (x509.CertificateBuilder().subject_name(_name(subject)).issuer_name(_name(issuer)).public_key(key)
         .serial_number(x509.random_serial_number())
         .not_valid_before(NOW - timedelta(days=30)).not_valid_after(NOW + timedelta(days=30))
         .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if aia:
        b = b.add_extension(x509.AuthorityInformationAccess([x509.AccessDescription(
            AuthorityInformationAccessOID.CA_ISSUERS, x509.UniformResourceIdentifier(aia))]), critical=False)
    if eku is not None and not ca:
        b = b.add_extension(x509.ExtendedKeyUsage(list(eku)), critical=False)
    return b.sign(signer, hashes.SHA256())


class Synthetic:
    """SYNTHETIC stand-in: root → intermediate → AK certificate (with an AIA URL to the intermediate)."""

    def __init__(self, root_cn: str = "Azure Virtual TPM Root Certificate Authority 2023"):
        self.root_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.ca_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.ak_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.root = _cert(root_cn, root_cn, self.root_key.public_key(), self.root_key, ca=True)
        self.ca = _cert("Synthetic Virtual TPM CA", root_cn, self.ca_key.public_key(), self.root_key, ca=True)
        self.ak = _cert("synthetic.TrustedVM.Azure.Microsoft", "Synthetic Virtual TPM CA", self.ak_key.public_key(),
                        self.ca_key, ca=False, aia=AIA_URL)


@pytest.fixture
def synthetic(monkeypatch) -> Synthetic:
    """A synthetic chain whose root the module is made to pin (monkeypatched) for this test only."""
    s = Synthetic()
    monkeypatch.setattr(tl, "ROOT", s.root)
    monkeypatch.setattr(tl, "KNOWN_INTERMEDIATES", ())
    return s


def test_synthetic_intermediate_fetched_over_aia(synthetic):
    calls = []

    def fetch(url):
        calls.append(url)
        return synthetic.ca.public_bytes(serialization.Encoding.DER)  # AIA URLs serve DER

    t = table(evidence(pem(synthetic.ak)), synthetic.ak_key.public_key(), fetch=fetch)
    assert not failed(t), t
    assert calls == [AIA_URL]
    assert t["ak"].actual == "synthetic.TrustedVM.Azure.Microsoft via Synthetic Virtual TPM CA"


def test_synthetic_intermediate_in_evidence_needs_no_fetch(synthetic):
    assert not failed(table(evidence(pem(synthetic.ak, synthetic.ca)), synthetic.ak_key.public_key()))


@pytest.mark.parametrize("fetched, why", [
    (OSError("network unreachable"), "network unreachable"),
    (b"<html>not a certificate</html>", "did not serve a certificate"),
    ("other", "did not issue"),
])
def test_synthetic_fetch_failures(synthetic, fetched, why):
    def fetch(url):
        if isinstance(fetched, Exception):
            raise fetched
        if fetched == "other":
            return Synthetic().ca.public_bytes(serialization.Encoding.PEM)  # same name, other key
        return fetched

    t = table(evidence(pem(synthetic.ak)), synthetic.ak_key.public_key(), fetch=fetch)
    assert failed(t) == {"ak", "ak cert chain"} and why in t["ak cert chain"].actual


def test_synthetic_rules_for_ca_and_eku(synthetic):
    key = synthetic.ak_key.public_key()
    ek_like = _cert("ek", "Synthetic Virtual TPM CA", key, synthetic.ca_key, ca=False,
                    eku=(x509.ObjectIdentifier("2.23.133.8.1"),))
    t = table(evidence(pem(ek_like, synthetic.ca)), key)
    assert "tcg-kp-AIKCertificate" in t["ak cert chain"].actual and t["ak cert chain"].failed
    ca_leaf = _cert("leaf", "Synthetic Virtual TPM CA", key, synthetic.ca_key, ca=True)
    assert table(evidence(pem(ca_leaf, synthetic.ca)), key)["ak cert chain"].failed
    not_ca = _cert("Synthetic Virtual TPM CA", synthetic.root.subject.rfc4514_string()[3:],
                   synthetic.ca_key.public_key(), synthetic.root_key, ca=False)
    t = table(evidence(pem(synthetic.ak, not_ca)), key)
    assert "not a CA" in t["ak cert chain"].actual


def test_ak_cert_from_another_root(capture):
    """A SYNTHETIC chain under a root that has the real root's name but not its key: the real,
    pinned root is in force (no monkeypatch), so the chain fails even with the real AK's key."""
    s = Synthetic()
    real_ak = capture[0].public_key()
    leaf = _cert("e2806aaec396.TrustedVM.Azure.Microsoft", "Synthetic Virtual TPM CA", real_ak, s.ca_key, ca=False)
    t = table(evidence(pem(leaf, s.ca, s.root)), real_ak,
              fetch=lambda url: s.ca.public_bytes(serialization.Encoding.DER))
    assert failed(t) == {"ak", "ak cert chain"}
    assert t["ak cert key"].result == "ok"


# ---------------------------------------------------------------------------- malformed input

@pytest.mark.parametrize("value, match", [
    (b"-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n", "not PEM"),
    ("-----BEGIN CERTIFICATE-----", "expected PEM bytes"),
    (b"-" * 70000, "at most"),
])
def test_bad_ak_cert(capture, value, match):
    with pytest.raises(BadInput, match=match) as e:
        tl.check_ak(evidence(value), capture[0].public_key(), now=NOW, fetch=no_fetch)
    assert e.value.where == "evidence: ak_cert"


def test_too_many_certificates(capture):
    with pytest.raises(BadInput, match="at most 8"):
        tl.check_ak(evidence(pem(*[capture[0]] * 9)), capture[0].public_key(), now=NOW, fetch=no_fetch)


def test_bad_arguments(capture):
    ev = evidence(pem(capture[0]))
    with pytest.raises(BadInput, match="ak_key"):
        tl.check_ak(ev, "PEM as str", now=NOW)
    with pytest.raises(BadInput, match="now"):
        tl.check_ak(ev, capture[0].public_key(), now="2025-01-01")
    with pytest.raises(BadInput, match="evidence"):
        tl.check_ak(None, capture[0].public_key(), now=NOW)


def test_http_fetch_refuses_other_schemes():
    for url in ("file:///etc/passwd", "http://www.microsoft.com/pkiops/certs/x.crt", "ftp://example.com/x"):
        with pytest.raises(tl.FetchRefused, match="not an https URL"):
            tl.http_fetch(url)


# ---------------------------------------------------------------------------- what the verifier fetches (issue 19)

def _ak_cert_with_urls(s: Synthetic, urls: list[str]) -> x509.Certificate:
    """A forged AK certificate (SYNTHETIC) whose AIA extension lists the given caIssuers URLs."""
    b = (x509.CertificateBuilder().subject_name(_name("forged")).issuer_name(_name("Synthetic Virtual TPM CA"))
         .public_key(s.ak_key.public_key()).serial_number(9)
         .not_valid_before(NOW - timedelta(days=1)).not_valid_after(NOW + timedelta(days=1))
         .add_extension(x509.AuthorityInformationAccess([x509.AccessDescription(
             AuthorityInformationAccessOID.CA_ISSUERS, x509.UniformResourceIdentifier(u)) for u in urls]),
             critical=False))
    return b.sign(s.ca_key, hashes.SHA256())


def test_many_aia_urls_are_not_all_fetched():
    s = Synthetic()
    urls = [f"https://pki{i}.example.test/ca.crt" for i in range(300)]
    calls = []

    def fetch(url):
        calls.append(url)
        raise OSError("unreachable")

    t = table(evidence(pem(_ak_cert_with_urls(s, urls))), s.ak_key.public_key(), fetch=fetch)
    assert calls == urls[:tl.MAX_FETCHES]
    assert t["ak cert chain"].failed and f"at most {tl.MAX_FETCHES} AIA URLs" in t["ak cert chain"].actual


def test_fetching_stops_when_the_time_is_used_up():
    s = Synthetic()
    urls = [f"https://pki{i}.example.test/ca.crt" for i in range(10)]
    clock = [100.0]
    calls = []

    def fetch(url):
        calls.append(url)
        clock[0] += 6.0  # each attempt takes 6 s of the 10 s budget
        raise OSError("timed out")

    t = table(evidence(pem(_ak_cert_with_urls(s, urls))), s.ak_key.public_key(), fetch=fetch, fetch_budget=10.0,
              clock=lambda: clock[0])
    assert len(calls) == 2 and "time for fetching issuers is used up" in t["ak cert chain"].actual


@pytest.fixture
def listener():
    """A TCP listener on 127.0.0.1 counting the connections it gets (none may come)."""
    import socket
    import threading

    sock = socket.create_server(("127.0.0.1", 0))
    accepted = []

    def serve():
        while True:
            try:
                conn, _ = sock.accept()
            except OSError:
                return
            accepted.append(conn)
            conn.close()

    threading.Thread(target=serve, daemon=True).start()
    yield sock.getsockname()[1], accepted
    sock.close()


def test_the_default_fetcher_reaches_no_private_address(listener):
    port, accepted = listener
    s = Synthetic()
    urls = [f"https://127.0.0.1:{port}/ca.crt", f"https://localhost:{port}/ca.crt", f"http://127.0.0.1:{port}/ca.crt",
            "https://169.254.169.254/metadata/instance", "https://10.1.2.3/ca.crt", "https://[::1]/ca.crt"]
    for url in urls:  # one URL per certificate: the count limit does not hide anything
        t = table(evidence(pem(_ak_cert_with_urls(s, [url]))), s.ak_key.public_key(), fetch=None)
        assert t["ak cert chain"].failed
        assert "not a public address" in t["ak cert chain"].actual or "not an https URL" in t["ak cert chain"].actual
    assert accepted == []
    # a test may opt in: then the same fetcher does connect
    with pytest.raises(Exception):
        tl.http_fetch(f"http://127.0.0.1:{port}/ca.crt", 5.0, allow_private=True, allow_http=True)
    assert len(accepted) == 1


def test_nothing_is_fetched_for_a_platform_the_client_does_not_trust(capture):
    """Evidence claiming azure-trusted-launch, checked against qemu measurements: no AK check runs,
    so none of its URLs is fetched (whatever the certificate lists)."""
    import struct

    from mithril_client.measurements import parse_measurements
    from mithril_client.verify import Trust, verify_evidence

    s = Synthetic()
    ak_cert, quote, sig = capture
    n = ak_cert.public_key().public_numbers().n
    body = struct.pack(">HHIH", 0x0001, 0x000B, 0x00050072, 0) + struct.pack(">HHHHI", 0x0010, 0x0014, 0x000B, 2048, 0)
    body += struct.pack(">H", 256) + n.to_bytes(256, "big")
    forged = _ak_cert_with_urls(s, [f"https://pki{i}.example.test/ca.crt" for i in range(50)])
    ak_pem = ak_cert.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    ev = Evidence("azure-trusted-launch", b"", quote, sig, {"sha256": {}}, ak_pem,
                  struct.pack(">H", len(body)) + body, b"", ak_cert=pem(forged))
    calls = []
    m = parse_measurements({"version": 1, "platform": "qemu", "mode": "production",
                            "pcrs": {"15": {"expected": ["00" * 32]}}}, "m")
    # a verifier's nonce follows the rule (tpm2.check_nonce); the capture's quote has none, so the
    # nonce row fails, which is not what this test is about
    report = verify_evidence(ev, bytes(32), m, Trust(fetch=calls.append, now=NOW), raise_on_failure=False)
    assert calls == []
    rows = {r.check: r for r in report.rows}
    assert rows["platform"].failed and rows["ak"].failed and "not checked" in rows["ak"].actual
    # the same evidence against azure-trusted-launch measurements does try (within the limit)
    m = parse_measurements({"version": 1, "platform": "azure-trusted-launch", "mode": "production",
                            "pcrs": {"15": {"expected": ["00" * 32]}}}, "m")
    verify_evidence(ev, bytes(32), m, Trust(fetch=calls.append, now=NOW), raise_on_failure=False)
    assert len(calls) == tl.MAX_FETCHES


def test_a_session_caps_the_fetch_time_by_its_timeout():
    from mithril_client import AttestedSession
    from mithril_client.verify import Trust

    m = {"version": 1, "platform": "azure-trusted-launch", "mode": "production", "pcrs": {"15": {"expected": ["00" * 32]}}}
    assert AttestedSession("https://203.0.113.7", m, timeout=3.0).trust.fetch_budget == 3.0
    assert AttestedSession("https://203.0.113.7", m, timeout=60.0).trust.fetch_budget == 10.0
    assert AttestedSession("https://203.0.113.7", m, timeout=60.0, trust=Trust(fetch_budget=2.0)).trust.fetch_budget == 2.0
