"""The GPU OS image, built and booted here: profile `gpu-local` has the OS of the llm profiles
(k3s, the NVIDIA driver from debs.os-nvidia, the kernel held at gpu.KERNEL_VERSION, the open
module built by DKMS inside mkosi) on the local QEMU platform. Built once (`all`, pinned .debs),
then booted under QEMU + OVMF + swtpm: every enforced PCR must equal the prediction, and the NVIDIA
unit, with no GPU here, must fail with one line on the serial console without stopping the boot.

Unreachable here, so replaced by clearly labelled STAND-INS pinned in the test project's lock
(`stand_in`, which the build logs and --locked refuses): the k3s binary and its airgap images
(GitHub) and NVIDIA's device plugin image (nvcr.io). k3s never starts in this boot anyway: it
requires the NVIDIA unit, which fails without a GPU. Everything else is real."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

import pytest

from pipeline import gpu
from pipeline import lock as lk
from pipeline.measure.gpt import read_table
from tests.conftest import mb, need, new_project
from tests.integration.test_boot import TIMEOUT, keep_log, tools  # noqa: F401 (fixture)
from tests.unit.test_oci_read import docker_archive, layer

pytestmark = pytest.mark.slow
PROFILE = "gpu-local"
WHY = "mithril-build test_gpu_image: {what} is unreachable from the test machines (no {where})"


def standin_project(dest: Path) -> Path:
    """A starter project whose lock pins the unreachable inputs to labelled stand-ins in the
    checkout (stand-ins/), each with its `stand_in` reason."""
    project = new_project(dest)
    folder = project / "stand-ins"
    folder.mkdir()
    (folder / "README").write_text("STAND-INS made by tests/integration/test_gpu_image.py: not k3s, not NVIDIA's "
                                   "device plugin. Never ship them.\n")
    (folder / "k3s").write_bytes(b"#!/bin/sh\n# STAND-IN for the k3s binary (tests/integration/test_gpu_image.py)\n"
                                 b"echo 'k3s STAND-IN: not the real k3s binary' >&2\nexit 1\n")

    def image(name: str, path: Path) -> None:
        docker_archive(path, [layer(("STAND-IN", "file", f"{name}: a stand-in image\n".encode()))],
                       config={"Entrypoint": ["/STAND-IN"], "Labels": {"mithril.stand-in": name}})
    image("k3s airgap images", folder / "k3s-airgap-images.tar")
    image("nvidia device plugin", folder / "nvidia-device-plugin.tar")

    def pin(path: str, what: str, where: str) -> lk.FilePin:
        data = (project / path).read_bytes()
        return lk.FilePin(path=path, sha256=hashlib.sha256(data).hexdigest(), size=len(data),
                          stand_in=WHY.format(what=what, where=where))
    lock = lk.load(project / lk.LOCK_FILE)
    lock.files["k3s"] = pin("stand-ins/k3s", "the k3s binary", "GitHub downloads")
    lock.files["k3s-airgap-images"] = pin("stand-ins/k3s-airgap-images.tar", "k3s's airgap images", "GitHub downloads")
    plugin = lock.images[gpu.DEVICE_PLUGIN]
    lock.images[gpu.DEVICE_PLUGIN] = plugin.model_copy(update={"archive": pin(
        "stand-ins/nvidia-device-plugin.tar", "NVIDIA's device plugin image", "nvcr.io")})
    lk.dump(lock, project / lk.LOCK_FILE)
    return project


@pytest.fixture(scope="module")
def gpu_build(tmp_path_factory) -> tuple[Path, str]:
    """`mithril-build all --profile gpu-local` once (the DKMS build dominates: ~10+ min on two
    cores); returns out/gpu-local and the build's log."""
    need("mkosi", "systemd-repart", "mksquashfs", "unsquashfs", "/usr/lib/systemd/ukify")
    project = standin_project(tmp_path_factory.mktemp("gpu") / "project")
    res = mb("all", "--project", project, "--profile", PROFILE, "--unlocked", timeout=3 * 3600)
    if res.returncode != 0:
        pytest.fail(f"mithril-build all --profile {PROFILE} failed (exit {res.returncode}):\n{res.stderr[-6000:]}")
    return project / "out" / PROFILE, res.stderr


def root_listing(out: Path, tmp: Path) -> list[str]:
    """The paths in the image's squashfs root (its partition copied out of os_disk.raw)."""
    disk = out / "os_disk.raw"
    part = read_table(disk).by_label("root", str(disk))
    root = tmp / "root.squashfs"
    with open(disk, "rb") as src, open(root, "wb") as dst:
        src.seek(part.offset)
        left = part.size
        while left:
            chunk = src.read(min(left, 1 << 24))
            dst.write(chunk)
            left -= len(chunk)
    res = subprocess.run(["unsquashfs", "-lc", "-d", "", root], capture_output=True, text=True, check=True)
    return res.stdout.splitlines()


def test_gpu_image_holds_the_driver_built_for_the_held_kernel(gpu_build, tmp_path):
    out, log = gpu_build
    assert "STAND-IN" in log and "files.k3s" in log  # the build says what is not real
    packages = json.loads((out / "packages.json").read_text())["packages"]
    assert packages["linux-image-cloud-amd64"] == gpu.KERNEL_VERSION
    assert packages["nvidia-open-kernel-dkms"] == gpu.DRIVER_VERSION
    kernel = json.loads((out / "os.json").read_text())["kernel"]["version"]
    listing = root_listing(out, tmp_path)
    modules = {p.rsplit("/", 1)[-1] for p in listing if f"/usr/lib/modules/{kernel}/updates/dkms/" in p}
    # Debian's names (its modprobe.d rules map `nvidia` to them)
    assert {"nvidia-current-open.ko", "nvidia-current-open-uvm.ko"} <= modules, sorted(modules)
    assert not any("/var/lib/dkms/" in p and p.endswith("/build") for p in listing)  # no build tree left
    assert not any(p.endswith((".key", ".priv", "mok.key")) for p in listing)  # no signing key made


def test_gpu_image_boots_with_every_enforced_pcr_and_the_nvidia_unit_fails_clean(tools, gpu_build, tmp_path):  # noqa: F811
    out, _ = gpu_build
    project = out.parent.parent
    res = mb("boot", "--project", project, "--profile", PROFILE, "--json", "--timeout", TIMEOUT,
             timeout=int(TIMEOUT) + 300)
    keep_log(out / "boot-serial.log", tmp_path, "boot-serial-gpu-local.log")
    try:
        data = json.loads(res.stdout)
    except json.JSONDecodeError:
        pytest.fail(f"boot failed (exit {res.returncode}):\n{res.stderr[-3000:]}")
    table = "\n".join(f"{r['check']:<13} {r['result']:<9} {r['policy']:<8} {r['actual']}" for r in data["rows"])
    print(f"\n{table}\naccel {data['accel']}, {data['seconds']} s to the PCR print")
    rows = {r["check"]: r for r in data["rows"]}
    for check in ("PCR 4", "PCR 11", "PCR 12", "PCR 13", "PCR 15", "app setup"):
        assert rows[check]["policy"] == "enforce", table
    failed = [c for c, r in rows.items() if r["policy"] == "enforce" and r["result"] != "ok"]
    assert not failed and data["ok"] and res.returncode == 0, table
    # The NVIDIA unit: exactly one line, before the PCR print. The module the DKMS build made
    # loaded and found no device (ENODEV): a module the kernel rejects (version magic, symbol
    # CRCs, format) would fail with another error.
    serial = (out / "boot-serial.log").read_text(errors="replace")
    lines = [line[line.index("mithril-nvidia:"):] for line in serial.splitlines() if "mithril-nvidia:" in line]
    assert len(lines) == 1 and "no usable NVIDIA GPU" in lines[0], lines
    assert "nvidia_current_open': No such device" in lines[0], lines
    assert serial.index("mithril-nvidia:") < serial.index("MITHRIL-PCRS-BEGIN")
