"""The measurements stage's `gpu` section: the driver RIM pinned in mithril.lock (here NVIDIA's
real sample driver RIM, tests/fixtures/nvidia/SOURCES.md — the RIM of the driver the images install,
535.309.01, is not reachable from here), checked at its `checked_at`, named in measurements.json
and shipped in gpu-rims/. The client then uses exactly that file (by sha256)."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import jsonschema
import pytest

from mithril_client.errors import BadInput
from mithril_client.measurements import parse_measurements
from pipeline import gpu
from pipeline.config import OsConfig
from pipeline.inputs import InputStore
from pipeline.lock import DebPin, FilePin, Lock
from pipeline.stages.measurements import SCHEMA, driver_rim
from tests.conftest import REPO

FIX = Path(__file__).resolve().parent.parent / "fixtures" / "nvidia"
RIM = FIX / "Driver_RIM_test_no_gpu.swidtag"  # NVIDIA's sample driver RIM, version 545.00
SHA = hashlib.sha256(RIM.read_bytes()).hexdigest()


def ctx(tmp_path: Path, **pin) -> SimpleNamespace:
    project = tmp_path / "project"
    (project / "measurements" / "nvidia").mkdir(parents=True, exist_ok=True)
    shutil.copy(RIM, project / "measurements" / "nvidia" / "NV_GPU_DRIVER_GH100_545.00.swidtag")
    fields = {"url": gpu.RIM_SERVICE + "NV_GPU_DRIVER_GH100_545.00",
              "path": "measurements/nvidia/NV_GPU_DRIVER_GH100_545.00.swidtag", "sha256": SHA,
              "checked_at": "2024-06-01T00:00:00Z", **pin}
    debs = fields.pop("debs", {})
    lock = Lock(files={gpu.DRIVER_RIM_PIN: FilePin(**{k: v for k, v in fields.items() if v is not None})}, debs=debs)
    profile = SimpleNamespace(os=OsConfig(k3s=True, nvidia=True), platform="azure-cvm")
    return SimpleNamespace(lock=lock, store=InputStore(tmp_path / "inputs", lock, project), profile=profile)


def test_section_names_the_pinned_rim_and_ships_it(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    section = driver_rim(ctx(tmp_path), out)
    assert section == {"driver_version": "545.00", "driver_rim": {
        "id": "NV_GPU_DRIVER_GH100_545.00", "sha256": SHA, "checked_at": "2024-06-01T00:00:00Z"}}
    assert (out / "gpu-rims" / "NV_GPU_DRIVER_GH100_545.00.swidtag").read_bytes() == RIM.read_bytes()
    schema = json.loads((REPO / SCHEMA).read_text())
    jsonschema.validate({"version": 1, "platform": "azure-cvm", "mode": "production",
                         "pcrs": {"4": {"expected": ["0" * 64], "policy": "enforce"}},
                         "application_disk": {"roothash": "0" * 64}, "inputs": {}, "outputs": {}, "gpu": section}, schema)
    m = parse_measurements({"version": 1, "mode": "production", "pcrs": {"4": {"expected": ["0" * 64]}},
                            "gpu": section}, "m")
    assert (m.gpu.driver_version, m.gpu.driver_rim_sha256) == ("545.00", SHA)


def test_the_same_inputs_give_the_same_bytes(tmp_path):
    outs = []
    for n in (1, 2):
        out = tmp_path / f"out{n}"
        out.mkdir()
        outs.append((json.dumps(driver_rim(ctx(tmp_path / str(n)), out), sort_keys=True),
                     (out / "gpu-rims" / "NV_GPU_DRIVER_GH100_545.00.swidtag").read_bytes()))
    assert outs[0] == outs[1]


@pytest.mark.parametrize("pin,why", [
    ({"checked_at": "2026-12-03T00:00:00Z"}, "expired 2025-"),  # its signing leaf expired 2025-06-26
    ({"checked_at": "2022-01-01T00:00:00Z"}, "not valid before"),
    ({"checked_at": None}, "checked_at: missing"),
    ({"sha256": "0" * 64}, "sha256"),
    ({"sha256": None}, "not pinned"),
    ({"debs": {"os-nvidia": {"libnvidia-ml1": DebPin(version="535.309.01-0+deb12u1", sha256="0" * 64, size=1,
                                                     url="x")}}},
     "debs.os-nvidia.libnvidia-ml1 is 535.309.01"),
])
def test_a_rim_that_does_not_hold_is_refused(tmp_path, pin, why):
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(BadInput, match=why):
        driver_rim(ctx(tmp_path, **pin), out)
    assert not (out / "gpu-rims").exists()


def test_a_tampered_rim_file_is_refused_even_with_a_matching_pin(tmp_path):
    text = RIM.read_text().replace('colloquialVersion="545.00"', 'colloquialVersion="550.90.07"')
    c = ctx(tmp_path, sha256=hashlib.sha256(text.encode()).hexdigest())
    (tmp_path / "project" / "measurements" / "nvidia" / "NV_GPU_DRIVER_GH100_545.00.swidtag").write_text(text)
    with pytest.raises(BadInput, match="RIM signature"):
        driver_rim(c, tmp_path)


def test_only_gpu_profiles_off_the_local_platform_carry_gpu_attestation():
    """gpu-local boots the GPU image under local QEMU, which passes no GPU through: no RIM, no `gpu`
    section; every other GPU profile needs them."""
    from pipeline.stages.measurements import gpu_attested

    def c(platform, nvidia):
        return SimpleNamespace(profile=SimpleNamespace(os=OsConfig(k3s=nvidia, nvidia=nvidia), platform=platform))
    assert gpu_attested(c("azure-cvm", True)) and gpu_attested(c("azure-trusted-launch", True))
    assert not gpu_attested(c("qemu", True)) and not gpu_attested(c("azure-cvm", False))
