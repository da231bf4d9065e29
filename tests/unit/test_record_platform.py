"""record-platform from a serial log: appends PCR 0-3 values with source and date, never twice."""

from __future__ import annotations

import datetime
import json
from pathlib import Path

import pytest
import yaml

from pipeline import record_platform as rp
from pipeline.errors import BadInput
from pipeline.measure import platform as plat
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
