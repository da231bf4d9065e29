"""Evidence version 2 on the real local stack: the attestation server on Debian's python3 and a
real swtpm, its GPU evidence collected through a STAND-IN libnvidia-ml (tests/unit/test_gpu_nvml.py)
that serves NVIDIA's sample report and chain. tpm2_checkquote is the oracle that the quote's
extraData is the binding of docs/evidence.md; the client must verify the binding, the chain and
the signature, and must refuse the nonce: the sample was signed by a real H100 for NVIDIA's own
nonce, and a stand-in cannot sign. No GPU is reachable here."""

from __future__ import annotations

import base64
import json
from dataclasses import replace
from pathlib import Path

import pytest

from mithril_client.evidence import GpuEvidence, parse_evidence
from mithril_client.gpu.binding import binding, derive_gpu_nonce
from mithril_client.gpu.rim import parse_rim
from mithril_client.measurements import parse_measurements
from mithril_client.verify import Trust, verify_evidence
from pipeline.errors import ToolFailed
from pipeline.swtpm import Swtpm
from tests.integration.test_attestation_server import Server, check_quote_with_tpm2_tools, need_tools
from tests.stack import pcr_values
from tests.unit.test_gpu_nvml import CHAIN, FIX, REPORT, build_standin

NONCE = bytes(range(7, 39))


@pytest.fixture(scope="module")
def gpu_lab(tmp_path_factory):
    need_tools()
    work = tmp_path_factory.mktemp("gpu")
    lib = build_standin(work)
    (work / "report.bin").write_bytes(REPORT)
    tpm = Swtpm(work / "tpm", for_qemu=False).start()
    mp = pytest.MonkeyPatch()
    try:
        tpm.tool(["tpm2_startup", "-c"])
        mp.setenv("MITHRIL_NVML_REPORT", str(work / "report.bin"))
        mp.setenv("MITHRIL_NVML_CHAIN", str(FIX / "hopperCertChain.txt"))
        mp.setenv("MITHRIL_NVML_NONCE_OUT", str(work / "nonces.bin"))
        (work / "ok").mkdir()
        server = Server(tpm, work / "ok", "--nvml", str(lib)).start()
        yield work, tpm, server, lib, mp
        server.stop()
    finally:
        mp.undo()
        tpm.stop()


def measurements(tpm: Swtpm, gpu: bool) -> object:
    pcrs = pcr_values(tpm)
    doc = {"version": 1, "platform": "qemu", "mode": "production",
           "pcrs": {str(i): {"expected": [pcrs[i]], "policy": "enforce"} for i in range(15)}}
    if gpu:
        rim = (FIX / "Driver_RIM_test_no_gpu.swidtag").read_bytes()
        doc["gpu"] = {"driver_version": "550.90.07", "driver_rim": {
            "id": "NV_GPU_DRIVER_GH100_550.90.07", "sha256": parse_rim(rim).sha256, "checked_at": "2024-06-01T00:00:00Z"}}
    return parse_measurements(doc, "measurements.json")


def test_a_gpu_profile_serves_version_2_bound_to_the_quote(gpu_lab):
    work, tpm, server, _, _ = gpu_lab
    doc = server.evidence(NONCE)
    assert doc["version"] == 2 and len(doc["gpus"]) == 1
    gpu = doc["gpus"][0]
    assert base64.b64decode(gpu["report"]) == REPORT and gpu["cert_chain"].encode() == CHAIN
    assert (work / "nonces.bin").read_bytes()[-32:] == derive_gpu_nonce(NONCE)
    bound = binding(NONCE, [GpuEvidence(REPORT, CHAIN)])
    check_quote_with_tpm2_tools(doc, work / "checkquote", nonce=bound)  # the TPM signed the binding
    with pytest.raises(ToolFailed):  # not the bare nonce
        check_quote_with_tpm2_tools(doc, work / "checkquote2", nonce=NONCE)


def test_version_2_matches_the_published_schema(gpu_lab):
    import jsonschema

    from tests.conftest import REPO

    schema = json.loads((REPO / "docs/evidence.schema.json").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    doc = gpu_lab[2].evidence(NONCE)
    jsonschema.validate(doc, schema)
    for bad in ({**doc, "gpus": []}, {k: v for k, v in doc.items() if k != "gpus"}, {**doc, "version": 1},
                {**doc, "gpus": [{"report": doc["gpus"][0]["report"]}]}):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, schema)


def test_the_client_checks_binding_chain_signature_and_refuses_the_samples_nonce(gpu_lab):
    _, tpm, server, _, _ = gpu_lab
    ev = parse_evidence(json.dumps(server.evidence(NONCE)))
    report = verify_evidence(ev, NONCE, measurements(tpm, gpu=True), Trust(), raise_on_failure=False)
    rows = {r.check: r for r in report.all_rows}
    assert rows["quote binding"].result == "ok"
    assert rows["gpu cert chain"].result == "ok" and rows["gpu signature"].result == "ok"
    assert rows["gpu nonce"].failed and rows["gpu nonce"].expected == derive_gpu_nonce(NONCE).hex()
    assert rows["gpu driver"].failed  # no RIM for 550.90.07 exists in NVIDIA's package
    assert not report.ok


def test_changed_gpu_evidence_breaks_the_binding(gpu_lab):
    _, tpm, server, _, _ = gpu_lab
    ev = parse_evidence(json.dumps(server.evidence(NONCE)))
    flipped = REPORT[:230] + bytes([REPORT[230] ^ 1]) + REPORT[231:]  # inside measurement block 4
    for gpus in ((GpuEvidence(flipped, CHAIN),), (ev.gpus[0], ev.gpus[0])):
        rows = {r.check: r for r in verify_evidence(replace(ev, gpus=gpus), NONCE, measurements(tpm, True), Trust(),
                                                      raise_on_failure=False).all_rows}
        assert rows["quote binding"].failed


def test_gpu_evidence_and_the_profile_must_agree(gpu_lab):
    _, tpm, server, _, _ = gpu_lab
    ev = parse_evidence(json.dumps(server.evidence(NONCE)))
    rows = {r.check: r for r in verify_evidence(ev, NONCE, measurements(tpm, gpu=False), Trust(), raise_on_failure=False).all_rows}
    assert rows["gpu evidence"].failed  # GPU evidence for a profile that names no GPU
    stripped = replace(ev, version=1, gpus=())
    rows = {r.check: r for r in verify_evidence(stripped, NONCE, measurements(tpm, gpu=True), Trust(), raise_on_failure=False).all_rows}
    assert rows["gpu evidence"].failed  # a GPU profile without GPU evidence
    assert rows["nonce"].failed  # and the quote holds the binding, not the nonce


@pytest.mark.parametrize("env,value", [("MITHRIL_NVML_FAIL", "nvmlDeviceGetConfComputeGpuAttestationReport"),
                                       ("MITHRIL_NVML_GPUS", "0"), ("MITHRIL_NVML_CHAIN", "/nonexistent")])
def test_no_document_without_gpu_evidence(gpu_lab, env, value):
    work, tpm, _, lib, mp = gpu_lab
    mp.setenv(env, value)
    folder = work / f"fail-{env}-{value.strip('/')}"
    folder.mkdir()
    server = Server(tpm, folder, "--nvml", str(lib)).start()
    try:
        status, doc, _ = server.request("GET", f"/attestation?nonce={NONCE.hex()}")
        assert status == 503 and set(doc) == {"error"} and "\n" not in doc["error"]
        assert "GPU evidence could not be collected" in doc["error"]
    finally:
        server.stop()
        mp.delenv(env)
        mp.setenv("MITHRIL_NVML_REPORT", str(work / "report.bin"))
        mp.setenv("MITHRIL_NVML_CHAIN", str(FIX / "hopperCertChain.txt"))


def test_a_missing_library_is_503_too(gpu_lab):
    work, tpm, _, _, _ = gpu_lab
    (work / "nolib").mkdir()
    server = Server(tpm, work / "nolib", "--nvml", str(work / "libnvidia-ml.so.1")).start()
    try:
        status, doc, _ = server.request("GET", f"/attestation?nonce={NONCE.hex()}")
        assert status == 503 and "cannot load NVML" in doc["error"]
    finally:
        server.stop()


def test_attest_verify_prints_the_gpu_rows(gpu_lab, tmp_path):
    """`attest verify --evidence` on a version-2 document: the release's gpu-rims/ next to
    measurements.json is read, --gpu-rims adds VBIOS RIMs, every GPU row is in the JSON."""
    from tests.conftest import cli

    _, tpm, server, _, _ = gpu_lab
    (tmp_path / "evidence.json").write_text(json.dumps(server.evidence(NONCE)))
    m = measurements(tpm, gpu=True)
    doc = {"version": 1, "platform": "qemu", "mode": "production",
           "pcrs": {str(i): {"expected": list(v[0]), "policy": v[1]} for i, v in m.pcrs.items()},
           "gpu": {"driver_version": m.gpu.driver_version, "driver_rim": {
               "id": m.gpu.driver_rim_id, "sha256": m.gpu.driver_rim_sha256, "checked_at": "2024-06-01T00:00:00Z"}}}
    (tmp_path / "measurements.json").write_text(json.dumps(doc))
    (tmp_path / "gpu-rims").mkdir()
    (tmp_path / "gpu-rims" / "driver.swidtag").write_bytes((FIX / "Driver_RIM_test_no_gpu.swidtag").read_bytes())
    res = cli("attest", "verify", "--evidence", tmp_path / "evidence.json", "--nonce", NONCE.hex(), "--measurements",
              tmp_path / "measurements.json", "--gpu-rims", FIX, "--json")
    assert res.returncode == 1, res.stderr
    rows = {r["check"]: r["result"] for r in json.loads(res.stdout)["rows"]}
    assert rows["quote binding"] == "ok" and rows["gpu signature"] == "ok" and rows["gpu cert chain"] == "ok"
    assert rows["gpu nonce"] == "MISMATCH" and rows["gpu revocation"] == "skipped"
    (tmp_path / "gpu-rims" / "bad.swidtag").write_text("<x/>")
    assert cli("attest", "verify", "--evidence", tmp_path / "evidence.json", "--nonce", NONCE.hex(), "--measurements",
               tmp_path / "measurements.json").returncode == 2
