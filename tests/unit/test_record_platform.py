"""record-platform from a serial log: appends PCR 0-3 values with source and date, never twice."""

from __future__ import annotations

import datetime
import json
from pathlib import Path

import pytest
import yaml

from pipeline import record_platform as rp
from pipeline.errors import BadInput
from pipeline.platforms import firmware as plat
from tests.conftest import mb, new_project

V = {i: f"{i:x}" * 64 for i in range(16)}


def serial_log(path: Path, values: dict[int, str]) -> Path:
    lines = ["noise", "MITHRIL-PCRS-BEGIN"] + [f"MITHRIL-PCR sha256 {i} {v}" for i, v in values.items()]
    path.write_text("\n".join(lines + ["MITHRIL-APP-ROOTHASH none", "MITHRIL-SETUP ok", "MITHRIL-PCRS-END", ""]))
    return path


@pytest.fixture
def project(tmp_path) -> Path:
    return new_project(tmp_path / "p")


def test_record_from_serial_appends_once(project, tmp_path):
    log = serial_log(tmp_path / "azure-serial.log", V)
    res = mb("record-platform", "--platform", "azure-trusted-launch", "--from-serial", log,
             "--source", "Azure NC24ads eastus", "--project", project, "--json")
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert [r["state"] for r in out["pcrs"]] == ["added"] * 4
    doc = yaml.safe_load((project / "measurements/platforms/azure-trusted-launch.yaml").read_text())
    pcr0 = doc["firmware_pcrs"][0]["values"]
    assert pcr0[-1]["value"] == V[0] and pcr0[-1]["source"] == "Azure NC24ads eastus"
    assert str(pcr0[-1]["date"]) == out["date"]
    assert doc["firmware_pcrs"][0]["policy"] == "warn"  # policies are a human decision
    # the file still loads with the measurements stage's model
    assert plat.load(project, "azure-trusted-launch").firmware_pcrs[3].values[-1].value == V[3]

    res = mb("record-platform", "--platform", "azure-trusted-launch", "--from-serial", log,
             "--project", project, "--json")
    assert [r["state"] for r in json.loads(res.stdout)["pcrs"]] == ["already known"] * 4
    doc2 = yaml.safe_load((project / "measurements/platforms/azure-trusted-launch.yaml").read_text())
    assert doc2 == doc


def test_record_library_skips_other_pcrs(project):
    result = rp.record(project, "qemu", {0: V[0], 4: V[4], 15: V[15]}, "test", datetime.date(2026, 1, 2))
    assert [r["pcr"] for r in result["pcrs"]] == [0]
    with pytest.raises(BadInput, match="no value for any of PCRs 0-3"):
        rp.record(project, "qemu", {4: V[4]}, "test")


@pytest.mark.parametrize("args, message", [
    (["--platform", "nope", "--from-serial", "LOG"], "unknown platform 'nope'"),
    (["--platform", "qemu", "--from-serial", "MISSING"], "cannot read serial log"),
    (["--platform", "qemu", "--from-serial", "EMPTY"], "no complete MITHRIL-PCRS-BEGIN"),
    (["--platform", "qemu", "--from-quote", "LOG"], "needs --pcrs"),
    (["--platform", "azure-cvm"], "only 'qemu' can be booted here"),
])
def test_bad_input_is_one_line(project, tmp_path, args, message):
    files = {"LOG": serial_log(tmp_path / "s.log", V), "MISSING": tmp_path / "missing.log",
             "EMPTY": tmp_path / "empty.log"}
    (tmp_path / "empty.log").write_text("booted, printed nothing\n")
    res = mb("record-platform", *[str(files.get(a, a)) for a in args], "--project", project)
    assert res.returncode == 2, res.stdout + res.stderr
    assert message in res.stderr and "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


# ---------------------------------------------------------------- from an evidence document (azure-cvm)

def _tpm2b_public_rsa(modulus: int) -> bytes:
    """The TPM2B_PUBLIC of an RSA-2048 restricted signing key (what the vTPM's AK public area looks like)."""
    import struct

    body = struct.pack(">HHI", 0x0001, 0x000B, 0x00050072) + struct.pack(">H", 0)  # RSA, sha256, attributes, no policy
    body += struct.pack(">HHHHI", 0x0010, 0x0014, 0x000B, 2048, 0) + struct.pack(">H", 256) + modulus.to_bytes(256, "big")
    return struct.pack(">H", len(body)) + body


def cvm_evidence(tmp_path: Path, hcl: bytes | None = None) -> Path:
    """A real azure-cvm capture (tests/fixtures/azure/SOURCES.md) as the evidence document the
    attestation server would serve: its quote, PCRs and HCL report, the VCEK with AMD's ASK and ARK."""
    import base64

    from tests.unit.test_azure_cvm import Capture

    cap = Capture("milan")
    doc = json.loads((Path(__file__).parent.parent / "fixtures/azure/cvm/trustee-evidence-v2-milan.json").read_text())
    pcrs = {str(i): v for i, v in enumerate(doc["tpm_quote"]["pcrs"])}
    from cryptography.hazmat.primitives import serialization

    ak_pem = cap.ak.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    ev = {"version": 1, "platform": "azure-cvm", "nonce": "00" * 32, "quote": base64.b64encode(cap.quote).decode(),
          "signature": base64.b64encode(cap.signature).decode(), "pcrs": {"sha256": pcrs}, "ak_pub": ak_pem,
          "ak_public": base64.b64encode(_tpm2b_public_rsa(cap.ak.public_numbers().n)).decode(), "tls_ca": ak_pem,
          "hcl_report": base64.b64encode(hcl or cap.hcl).decode(), "vcek_chain": cap.chain().decode()}
    path = tmp_path / "evidence.json"
    path.write_text(json.dumps(ev))
    return path


@pytest.mark.filterwarnings("ignore:Parsed a serial number")
def test_record_from_real_cvm_evidence_records_the_id_key(project, tmp_path):
    from mithril_client.platforms.azure_cvm import AZURE_ID_KEY_DIGESTS

    path = cvm_evidence(tmp_path)
    res = mb("record-platform", "--platform", "azure-cvm", "--from-evidence", path, "--project", project, "--json")
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    # the digest read from the genuine report (also pinned in the test of the captures)
    assert out["snp_id_key_digest"] == {"value": AZURE_ID_KEY_DIGESTS[0], "state": "added", "shipped": True}
    assert [r["state"] for r in out["pcrs"]] == ["added"] * 4
    stored = plat.load(project, "azure-cvm")
    assert [v.value for v in stored.snp_id_key_digests] == [AZURE_ID_KEY_DIGESTS[0]]
    res = mb("record-platform", "--platform", "azure-cvm", "--from-evidence", path, "--project", project, "--json")
    assert json.loads(res.stdout)["snp_id_key_digest"]["state"] == "already known"
    assert len(plat.load(project, "azure-cvm").snp_id_key_digests) == 1


@pytest.mark.filterwarnings("ignore:Parsed a serial number")
def test_record_from_evidence_refuses_what_does_not_verify(project, tmp_path):
    from tests.unit.test_azure_cvm import Capture, REPORT

    hcl = bytearray(Capture("milan").hcl)
    hcl[REPORT + 0x100] ^= 1  # inside the signed report
    path = cvm_evidence(tmp_path, bytes(hcl))
    res = mb("record-platform", "--platform", "azure-cvm", "--from-evidence", path, "--project", project)
    assert res.returncode == 1 and "snp signature" in res.stderr
    res = mb("record-platform", "--platform", "qemu", "--from-evidence", cvm_evidence(tmp_path), "--project", project)
    assert res.returncode == 2 and "not --platform 'qemu'" in res.stderr
    assert "snp_id_key_digests" not in (project / "measurements/platforms/azure-cvm.yaml").read_text()
