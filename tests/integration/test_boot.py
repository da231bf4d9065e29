"""The proof that the predictions are right: boot the demo build under QEMU + OVMF + swtpm and
require every enforced PCR to match measurements.json; then boot it with one byte of the app
disk's data partition changed and require the boot check to fail (exit 1).

The serial logs are copied into the test's tmp dir and their paths printed (pytest -s / -rA)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from pipeline.measure.gpt import read_table
from pipeline.platforms.qemu.boot import OVMF_CODE, OVMF_VARS
from tests.conftest import mb, need

pytestmark = pytest.mark.slow
TIMEOUT = "1200"  # a ceiling for a stuck guest, not a performance goal


@pytest.fixture(scope="module")
def tools():
    need("qemu-system-x86_64", "swtpm")
    for f in (OVMF_CODE, OVMF_VARS):
        if not f.is_file():
            pytest.skip(f"needs {f} (apt-get install ovmf; scripts/setup.sh)")


def keep_log(serial: Path, tmp_path: Path, name: str) -> None:
    """Copy the serial log into the test's tmp dir and, for CI artifacts, into
    $MITHRIL_TEST_ARTIFACTS when set (pytest rotates its tmp dirs away)."""
    if not serial.exists():
        print(f"\nno boot serial log at {serial}")
        return
    targets = [tmp_path / name]
    if os.environ.get("MITHRIL_TEST_ARTIFACTS"):
        targets.append(Path(os.environ["MITHRIL_TEST_ARTIFACTS"]) / name)
    for target in targets:
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(serial, target)
        print(f"\nboot serial log: {target}")


def boot(project: Path) -> tuple[int, dict | None, str]:
    res = mb("boot", "--project", project, "--json", "--timeout", TIMEOUT, timeout=int(TIMEOUT) + 300)
    try:
        data = json.loads(res.stdout)
    except json.JSONDecodeError:
        data = None
    return res.returncode, data, res.stderr


def test_demo_boot_matches_every_enforced_pcr(tools, demo_build: Path, tmp_path):
    project = demo_build.parent.parent
    code, data, err = boot(project)
    keep_log(demo_build / "boot-serial.log", tmp_path, "boot-serial.log")
    assert data is not None, f"boot failed (exit {code}):\n{err[-3000:]}"
    rows = {r["check"]: r for r in data["rows"]}
    measurements = json.loads((demo_build / "measurements.json").read_text())
    required = ["PCR 4", "PCR 11", "PCR 12", "PCR 13", "PCR 15"]
    if measurements["pcrs"].get("9", {}).get("policy") == "enforce":
        required.append("PCR 9")
    table = "\n".join(f"{r['check']:<13} {r['result']:<9} {r['policy']:<8} {r['actual']}" for r in data["rows"])
    print(f"\n{table}\naccel {data['accel']}, {data['seconds']} s to the PCR print")
    for check in required:
        assert check in rows, f"{check} is not in measurements.json\n{table}"
        assert rows[check]["policy"] == "enforce", table
    failed = [c for c, r in rows.items() if r["policy"] == "enforce" and r["result"] != "ok"]
    assert not failed, f"enforced checks failed: {failed}\n{table}"
    assert code == 0 and data["ok"], table


def test_tampered_app_disk_fails_the_boot_check(tools, demo_build: Path, tmp_path):
    """One byte changed in the first block of the app data partition (the squashfs superblock, read
    on every mount): the verity open/mount fails or PCR 15 differs; the boot check says so (exit 1)."""
    src = demo_build.parent.parent
    project = tmp_path / "tampered"
    out = project / "out" / "demo"
    out.mkdir(parents=True)
    for name in ("mithril.yaml", "mithril.lock"):
        shutil.copy2(src / name, project / name)
    shutil.copytree(src / "measurements", project / "measurements")
    for name in ("os_disk.raw", "measurements.json", "appdisk.json"):
        shutil.copy2(demo_build / name, out / name)
    disk = out / "application_disk.raw"
    shutil.copy2(demo_build / "application_disk.raw", disk)  # a COPY: the build stays intact
    data_part = read_table(disk).by_label("app", str(disk))
    with open(disk, "r+b") as f:
        f.seek(data_part.offset + 8)
        byte = f.read(1)
        f.seek(data_part.offset + 8)
        f.write(bytes([byte[0] ^ 0xFF]))

    code, data, err = boot(project)
    keep_log(out / "boot-serial.log", tmp_path, "boot-serial-tampered.log")
    assert data is not None, f"the tampered boot did not reach the PCR print (exit {code}):\n{err[-3000:]}"
    rows = {r["check"]: r for r in data["rows"]}
    print("\n" + "\n".join(f"{c:<13} {r['result']:<9} {r['actual']}" for c, r in rows.items()))
    assert code == 1 and not data["ok"]
    assert rows["PCR 15"]["result"] != "ok" or rows["app setup"]["result"] != "ok", rows
