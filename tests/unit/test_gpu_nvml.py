"""The attestation server's NVML collection (attestation_server/nvml.py) against a STAND-IN for
libnvidia-ml: tests/fixtures/nvidia/nvml_standin.c, compiled here with cc, implementing the NVML
calls with the structure layouts of NVIDIA's nvml.h and serving NVIDIA's sample report and chain.
No GPU and no real libnvidia-ml are reachable here."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from attestation_server.nvml import GpuError, Nvml
from mithril_client.gpu.binding import derive_gpu_nonce
from tests.conftest import need

FIX = Path(__file__).resolve().parent.parent / "fixtures" / "nvidia"
REPORT = bytes.fromhex((FIX / "hopperAttestationReport.txt").read_text().strip())
CHAIN = (FIX / "hopperCertChain.txt").read_bytes()


def build_standin(folder: Path) -> Path:
    need("cc")
    lib = folder / "libnvidia-ml-standin.so"
    subprocess.run(["cc", "-shared", "-fPIC", "-O1", "-o", str(lib), str(FIX / "nvml_standin.c")], check=True,
                   capture_output=True, timeout=120)
    return lib


@pytest.fixture
def standin(tmp_path, monkeypatch):
    lib = build_standin(tmp_path)
    (tmp_path / "report.bin").write_bytes(REPORT)
    monkeypatch.setenv("MITHRIL_NVML_REPORT", str(tmp_path / "report.bin"))
    monkeypatch.setenv("MITHRIL_NVML_CHAIN", str(FIX / "hopperCertChain.txt"))
    monkeypatch.setenv("MITHRIL_NVML_NONCE_OUT", str(tmp_path / "nonces.bin"))
    for var in ("MITHRIL_NVML_GPUS", "MITHRIL_NVML_FAIL"):
        monkeypatch.delenv(var, raising=False)
    return lib, tmp_path


def test_collects_each_gpus_report_and_chain_for_the_derived_nonce(standin, monkeypatch):
    lib, work = standin
    monkeypatch.setenv("MITHRIL_NVML_GPUS", "2")
    nonce = derive_gpu_nonce(b"\x11" * 32)
    got = Nvml(str(lib)).collect(nonce)
    assert [(g.report, g.cert_chain) for g in got] == [(REPORT, CHAIN.rstrip(b"\0"))] * 2
    assert (work / "nonces.bin").read_bytes() == nonce * 2  # what the "GPU" was asked to sign


@pytest.mark.parametrize("call", ["nvmlInit_v2", "nvmlDeviceGetCount_v2", "nvmlDeviceGetHandleByIndex_v2",
                                  "nvmlDeviceGetConfComputeGpuAttestationReport",
                                  "nvmlDeviceGetConfComputeGpuCertificate"])
def test_a_failing_call_is_a_gpu_error_naming_it(standin, monkeypatch, call):
    lib, _ = standin
    monkeypatch.setenv("MITHRIL_NVML_FAIL", call)
    with pytest.raises(GpuError, match=f"{call} failed: NVML error 999"):
        Nvml(str(lib)).collect(bytes(32))


@pytest.mark.parametrize("env,value,why", [
    ("MITHRIL_NVML_GPUS", "0", "0 GPUs"),
    ("MITHRIL_NVML_GPUS", "9", "9 GPUs"),
    ("MITHRIL_NVML_REPORT", "/nonexistent", "report size 0"),
    ("MITHRIL_NVML_CHAIN", "/nonexistent", "chain size 0"),
    ("MITHRIL_NVML_CHAIN", str(FIX / "hopperAttestationReport.txt"), "not PEM"),
])
def test_missing_or_malformed_evidence_is_a_gpu_error(standin, monkeypatch, env, value, why):
    lib, _ = standin
    monkeypatch.setenv(env, value)
    with pytest.raises(GpuError, match=why):
        Nvml(str(lib)).collect(bytes(32))


def test_no_library_is_a_gpu_error(tmp_path):
    with pytest.raises(GpuError, match="cannot load NVML"):
        Nvml(str(tmp_path / "libnvidia-ml.so.1"))


def test_a_wrong_nonce_size_is_refused(standin):
    lib, _ = standin
    with pytest.raises(GpuError, match="32 bytes"):
        Nvml(str(lib)).collect(bytes(16))


def test_gpu_profiles_start_the_server_with_nvml_from_the_measured_root(tmp_path):
    """The rendered attestation-server manifest: `--nvml` and the driver's library folder (read-only)
    on a GPU profile (llama), neither on the demo (no GPU)."""
    import yaml

    from pipeline.gpu import LIB_DIR
    from tests.conftest import REPO, cli

    for profile, gpu in (("llama", True), ("demo", False)):
        res = cli("render", "--profile", profile, tmp_path / profile, cwd=REPO)
        assert res.returncode == 0, res.stderr
        manifest = tmp_path / profile / "appdisk" / "manifests" / "attestation-server.yaml"
        if not gpu:  # the demo runs without k3s: no manifest; nothing it renders names NVML
            assert not any("--nvml" in p.read_text(errors="replace") for p in (tmp_path / profile).rglob("*")
                           if p.is_file())
            continue
        deployment = next(d for d in yaml.safe_load_all(manifest.read_text()) if d and d["kind"] == "Deployment")
        spec = deployment["spec"]["template"]["spec"]
        args = spec["containers"][0]["args"]
        assert ("--nvml" in args) is gpu
        if gpu:
            assert args[args.index("--nvml") + 1] == f"{LIB_DIR}/libnvidia-ml.so.1"
            mounts = spec["containers"][0]["volumeMounts"]
            assert {"name": "nvidia", "mountPath": LIB_DIR, "readOnly": True} in mounts
