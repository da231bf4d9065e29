"""`attest verify --evidence` end to end on real evidence captured on an Azure SEV-SNP CVM (Milan;
tests/fixtures/azure/SOURCES.md): the capture's vTPM quote, signature, PCR values, HCL report and
VCEK, put into our evidence format. The measurements are the capture's own PCR values (what an
auditor would have predicted for that VM); the refusals are the point."""

from __future__ import annotations

import base64
import json
import struct
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from mithril_client import tpm2
from tests.conftest import mb, mc
from tests.unit.test_azure_cvm import Capture

pytestmark = pytest.mark.filterwarnings("ignore:Parsed a serial number")
# The capture is not from a Mithril image: its PCR 15 holds no CA step, so no measurements.json
# can bind a TLS CA to it, and the `tls binding` row (never a policy) refuses it. Every other row is
# the point here.
CA = "-----BEGIN CERTIFICATE-----\nnot measured: the capture has no CA step in PCR 15\n-----END CERTIFICATE-----\n"


def tpm2b_public_rsa(key) -> bytes:
    """A TPM2B_PUBLIC around the captured AK's RSA key (the capture has the key as a JWK only):
    RSA, sha256 name, restricted signing, RSASSA-SHA256, 2048 bits. A wrapper we make, not
    captured; on Azure the AK's tie is its certificates, not its attributes."""
    n = key.public_numbers().n.to_bytes(256, "big")
    body = struct.pack(">HHIH", 0x0001, 0x000B, 0x00050072, 0) + struct.pack(">HHHHI", 0x0010, 0x0014, 0x000B, 2048, 0)
    body += struct.pack(">H", len(n)) + n
    return struct.pack(">H", len(body)) + body


def write_capture(d: Path) -> str:
    """evidence.json and measurements.json of the Milan capture into folder d; returns the nonce
    (hex) the capture's quote holds. Also used by tests/integration/test_wheel.py."""
    cap = Capture("milan")
    raw = json.loads((Path(__file__).resolve().parent.parent / "fixtures/azure/cvm/trustee-evidence-v2-milan.json")
                     .read_text())["tpm_quote"]["pcrs"]
    quote = tpm2.parse_quote(cap.quote)
    pcrs = {str(i): v.lower() for i, v in enumerate(raw)}
    ak_pem = cap.ak.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    doc = {"version": 1, "platform": "azure-cvm", "nonce": quote.extra_data.hex() or "00" * 16,
           "quote": base64.b64encode(cap.quote).decode(), "signature": base64.b64encode(cap.signature).decode(),
           "pcrs": {"sha256": pcrs}, "ak_pub": ak_pem.decode(),
           "ak_public": base64.b64encode(tpm2b_public_rsa(cap.ak)).decode(), "tls_ca": CA,
           "hcl_report": base64.b64encode(cap.hcl).decode(), "vcek_chain": cap.chain().decode()}
    (d / "evidence.json").write_text(json.dumps(doc))
    (d / "measurements.json").write_text(json.dumps({
        "version": 1, "platform": "azure-cvm", "mode": "production",
        "pcrs": {str(i): {"expected": [pcrs[str(i)]], "policy": "enforce"} for i in range(15)}}))
    return quote.extra_data.hex()


@pytest.fixture(scope="module")
def capture(tmp_path_factory) -> tuple[Path, str]:
    d = tmp_path_factory.mktemp("capture")
    return d, write_capture(d)


def verify(d: Path, nonce: str, *extra, evidence: Path | None = None):
    res = mb("attest", "verify", "--evidence", evidence or d / "evidence.json", "--nonce", nonce,
             "--measurements", d / "measurements.json", "--json", *extra)
    return res, {r["check"]: r["result"] for r in json.loads(res.stdout)["rows"]} if res.stdout else {}


def test_real_cvm_evidence_verifies_all_but_the_tls_binding(capture):
    d, nonce = capture
    res, rows = verify(d, nonce)
    assert res.returncode == 1, res.stdout + res.stderr
    assert {check for check, result in rows.items() if result not in ("ok",)} == {"tls binding"}, rows
    for check in ("platform", "signature", "nonce", "pcr digest", "PCR 0", "PCR 14", "snp signature",
                  "snp vcek chain", "snp report_data", "snp HCLAkPub", "snp id key", "snp author key",
                  "snp debug", "snp guest policy", "snp vmpl", "snp tcb", "ak"):
        assert rows[check] == "ok", rows


def test_snp_policy_from_a_file(capture, tmp_path):
    d, nonce = capture
    strict = tmp_path / "policy.json"
    strict.write_text(json.dumps({"min_tcb_milan": {"bootloader": 4, "tee": 0, "snp": 99, "microcode": 219}}))
    res, rows = verify(d, nonce, "--snp-policy", strict)
    assert res.returncode == 1 and rows["snp tcb"] == "MISMATCH" and rows["ak"] == "MISMATCH"
    strict.write_text(json.dumps({"vmpl": 9}))
    res, _ = verify(d, nonce, "--snp-policy", strict)
    assert res.returncode == 2 and "vmpl" in res.stderr and len(res.stderr.strip().splitlines()) == 1


def test_other_nonce_and_changed_pcr_are_refused(capture, tmp_path):
    d, nonce = capture
    res, rows = verify(d, "ab" * 32)
    assert res.returncode == 1 and rows["nonce"] == "MISMATCH"
    doc = json.loads((d / "evidence.json").read_text())
    doc["pcrs"]["sha256"]["4"] = "00" * 32
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(doc))
    res, rows = verify(d, nonce, evidence=bad)
    assert res.returncode == 1 and rows["pcr digest"] == "MISMATCH" and rows["PCR 4"] == "missing"


def test_mithril_client_verify_prints_what_attest_verify_prints(capture):
    """`mithril-client verify` (its own CLI, the client distribution's) and `mithril-build attest
    verify` run the same code: the same rows, text and exit status on the real capture."""
    d, nonce = capture
    for extra in (["--json"], []):
        args = ["--evidence", d / "evidence.json", "--nonce", nonce, "--measurements", d / "measurements.json", *extra]
        build, client = mb("attest", "verify", *args), mc("verify", *args)
        assert (client.returncode, client.stdout, client.stderr) == (build.returncode, build.stdout, build.stderr)
        assert client.returncode == 1 and client.stdout
    rows = {r["check"]: r["result"] for r in json.loads(mc("verify", *args, "--json").stdout)["rows"]}
    assert rows["ak"] == "ok" and rows["snp vcek chain"] == "ok" and rows["tls binding"] == "MISMATCH"
    replay = mc("verify", "--evidence", d / "evidence.json", "--nonce", "ab" * 32, "--measurements",
                d / "measurements.json", "--json")
    assert replay.returncode == 1 and {r["check"]: r["result"] for r in json.loads(replay.stdout)["rows"]}["nonce"] == "MISMATCH"
