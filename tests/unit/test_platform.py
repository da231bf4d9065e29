import datetime
import shutil

import pytest
import yaml

from pipeline.errors import BadInput
from pipeline.platforms import firmware as platform
from pipeline.project import REPO



@pytest.mark.parametrize("name", ["qemu", "azure-trusted-launch", "azure-cvm"])
def test_shipped_platforms_load(name):
    p = platform.load(REPO, name)
    assert [e.type for e in p.pcr4_firmware_events] == ["EV_EFI_ACTION", "EV_SEPARATOR"]
    assert sorted(p.firmware_pcrs) == [0, 1, 2, 3]
    assert p.firmware_pcrs[0].policy == "warn"


@pytest.mark.parametrize("name", ["azure-trusted-launch", "azure-cvm"])
def test_azure_firmware_pcrs_warn_until_observed_and_pcr8_is_zero(name):
    """PCR 0-3 only from values observed on a real VM (none recorded from here), so warn; PCR 8
    is enforced as zero (nothing between firmware and UKI measures into it)."""
    p = platform.load(REPO, name)
    assert all(p.firmware_pcrs[i].policy == "warn" and not p.firmware_pcrs[i].values for i in range(4))
    assert p.zero_pcrs == (8,)


def test_qemu_firmware_pcrs_are_warn_only():
    p = platform.load(REPO, "qemu")
    assert all(p.firmware_pcrs[i].policy == "warn" for i in range(4))


def test_record_and_rewrite_round_trip(tmp_path):
    shutil.copytree(REPO / "measurements", tmp_path / "measurements")
    p = platform.load(tmp_path, "qemu")
    before = list(p.firmware_pcrs[0].values)
    q = platform.add_values(p, {0: "AB" * 32, 1: "cd" * 32}, "test boot", datetime.date(2026, 11, 23))
    q = platform.add_values(q, {0: "ab" * 32}, "again", datetime.date(2026, 11, 24))  # duplicate: skipped
    platform.path_for(tmp_path, "qemu").write_text(platform.dump(q))
    r = platform.load(tmp_path, "qemu")
    assert r == q
    assert list(r.firmware_pcrs[0].values[:-1]) == before
    assert r.firmware_pcrs[0].values[-1].value == "ab" * 32
    assert r.firmware_pcrs[0].values[-1].source == "test boot"


def test_unknown_platform_names_the_file_and_the_known_ones():
    with pytest.raises(BadInput, match=r"nope\.yaml: unknown platform 'nope' .*qemu"):
        platform.load(REPO, "nope")


@pytest.mark.parametrize("edit,field", [
    (lambda d: d["firmware_pcrs"][1].update(policy="enforce", values=[]), "firmware_pcrs.1"),
    (lambda d: d["firmware_pcrs"].pop(3), "firmware_pcrs"),
    (lambda d: d["pcr4_firmware_events"][0].update(hex="00"), "pcr4_firmware_events.0"),
    (lambda d: d.update(colour="blue"), "colour: unknown key"),
    (lambda d: d.update(name="other"), "name"),
])
def test_bad_platform_file_is_one_line_naming_the_field(tmp_path, edit, field):
    shutil.copytree(REPO / "measurements", tmp_path / "measurements")
    path = platform.path_for(tmp_path, "qemu")
    data = yaml.safe_load(path.read_text())
    edit(data)
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(BadInput) as e:
        platform.load(tmp_path, "qemu")
    assert field in str(e.value) and "\n" not in str(e.value) and str(path) in str(e.value)
