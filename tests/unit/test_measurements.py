"""The measurements stage and `measure-disk`: whole predictions from a disk image."""

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import jsonschema
import pytest

from pipeline.errors import BadInput
from pipeline.cache import StageResult
from pipeline.files import tree_digests
from pipeline.measure import pe, predict
from pipeline.platforms import firmware as platform
from pipeline.project import REPO
from pipeline.stages.measurements import Measurements, schema_path
from tests import ukifixture as U
from tests.conftest import mb

ROOTHASH = "5b1f9a2c" * 8
OTHER_ROOTHASH = "7e3d0c41" * 8


def ctx(mode="production", platform="qemu", root=REPO):
    profile = SimpleNamespace(platform=platform, mode=mode, os=SimpleNamespace(nvidia=False))
    return SimpleNamespace(root=root, profile=profile,
                           checkout_digests=lambda *rel: tree_digests(root, *rel))


def deps(tmp: Path, os_disk: Path, uki: bytes, roothash: str = ROOTHASH, os_mode: str = "production") -> dict:
    os_dir, app_dir = tmp / "os", tmp / "appdisk"
    os_dir.mkdir(parents=True)
    app_dir.mkdir(parents=True)
    shutil.copyfile(os_disk, os_dir / "os_disk.raw")
    (os_dir / "uki.efi").write_bytes(uki)
    (os_dir / "os.json").write_text(json.dumps({"mode": os_mode}))
    U.app_disk(app_dir / "application_disk.raw", roothash)
    (app_dir / "appdisk.json").write_text(json.dumps({"roothash": roothash}))
    return {name: StageResult(d, {"outputs": tree_digests(d, ".")}) for name, d in (("os", os_dir), ("appdisk", app_dir))}


def build(tmp: Path, dep: dict, **kw) -> Path:
    out = tmp / "out"
    out.mkdir()
    Measurements().build(ctx(**kw), out, dep)
    return out


@pytest.fixture(scope="module")
def built(os_disk252, uki252, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("m")
    return build(tmp, deps(tmp, os_disk252, uki252.read_bytes()))


def load(out: Path) -> dict:
    return json.loads((out / "measurements.json").read_text())


def test_follows_the_schema_and_the_compare_parser(built):
    from mithril_client import measurements as compare

    doc = load(built)
    jsonschema.validate(doc, json.loads(schema_path(REPO).read_text()))
    m = compare.parse_measurements(doc, "measurements.json")
    plat = platform.load(REPO, "qemu")
    firmware = [i for i, fw in plat.firmware_pcrs.items() if fw.values]
    assert sorted(m.pcrs) == sorted([*firmware, 4, 9, 11, 12, 13, 15])
    for i in firmware:
        assert m.pcrs[i] == (tuple(sorted({v.value for v in plat.firmware_pcrs[i].values})), plat.firmware_pcrs[i].policy)
    assert sorted(int(k) for k in doc.get("not_predicted", {})) == sorted({0, 1, 2, 3} - set(firmware))
    assert m.mode == "production" and m.app_roothash == ROOTHASH


def test_schema_rejects_what_it_must():
    schema = json.loads(schema_path(REPO).read_text())
    base = {"version": 1, "platform": "qemu", "mode": "production", "pcrs": {"4": {"expected": ["0" * 64],
            "policy": "enforce"}}, "application_disk": {"roothash": "0" * 64}, "inputs": {}, "outputs": {}}
    jsonschema.validate(base, schema)
    for bad in ({"mode": "prod"}, {"pcrs": {"4": {"expected": [], "policy": "enforce"}}},
                {"pcrs": {"24": {"expected": ["0" * 64], "policy": "enforce"}}}, {"timestamp": 1}):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate({**base, **bad}, schema)


def test_event_log_replays_to_every_predicted_pcr(built):
    from pipeline.measure.pcr import Event, replay

    doc, log = load(built), json.loads((built / "eventlog.json").read_text())
    events = [Event(**e) for e in log["events"]]
    for index in (4, 9, 11, 12, 13, 15):
        assert replay(events, index).hex() == doc["pcrs"][str(index)]["expected"][0]


def test_same_artifacts_give_identical_bytes(built, os_disk252, uki252, tmp_path):
    # another folder, another copy of the same disk: no paths, times or randomness in the output
    again = build(tmp_path, deps(tmp_path, os_disk252, uki252.read_bytes()))
    for name in ("measurements.json", "eventlog.json"):
        assert (again / name).read_bytes() == (built / name).read_bytes()
        assert str(tmp_path).encode() not in (again / name).read_bytes()
    assert load(built)["outputs"]["eventlog.json"] == __import__("hashlib").sha256(
        (built / "eventlog.json").read_bytes()).hexdigest()


def test_changed_app_disk_changes_pcr15_only(built, os_disk252, uki252, tmp_path):
    other = load(build(tmp_path, deps(tmp_path, os_disk252, uki252.read_bytes(), OTHER_ROOTHASH)))
    base = load(built)
    changed = sorted(int(k) for k in base["pcrs"] if base["pcrs"][k] != other["pcrs"][k])
    assert changed == [15]


def test_one_byte_of_the_uki_changes_pcr4_and_11(built, uki252, tmp_path):
    data = bytearray(uki252.read_bytes())
    s = pe.PeImage(bytes(data), "u").section(".osrel")
    data[s.raw_offset] ^= 0x20
    disk = U.os_disk(tmp_path, bytes(data))
    other = load(build(tmp_path, deps(tmp_path, disk, bytes(data))))
    base = load(built)
    assert sorted(int(k) for k in base["pcrs"] if base["pcrs"][k] != other["pcrs"][k]) == [4, 11]


def test_debug_profile_is_marked_debug_and_must_match_the_image(os_disk252, uki252, tmp_path):
    out = build(tmp_path, deps(tmp_path, os_disk252, uki252.read_bytes(), os_mode="debug"), mode="debug")
    assert load(out)["mode"] == "debug"
    other = tmp_path / "x"
    with pytest.raises(BadInput, match="os.json: mode: the OS image is 'debug', the profile says 'production'"):
        build(other, deps(other, os_disk252, uki252.read_bytes(), os_mode="debug"), mode="production")


def test_azure_enforces_4_8_9_11_12_13_15(os_disk252, uki252, tmp_path):
    doc = load(build(tmp_path, deps(tmp_path, os_disk252, uki252.read_bytes()), platform="azure-trusted-launch"))
    # firmware PCRs: no value observed on Azure yet, so none is listed (and none enforced)
    assert not {"0", "1", "2", "3"} & set(doc["pcrs"]) and {"0", "1", "2", "3"} <= set(doc["not_predicted"])
    assert doc["pcrs"]["8"] == {"expected": ["00" * 32], "policy": "enforce"}
    assert {k for k, v in doc["pcrs"].items() if v["policy"] == "enforce"} == {"4", "8", "9", "11", "12", "13", "15"}


def test_uki_copy_must_match_the_esp(os_disk252, uki252, tmp_path):
    with pytest.raises(BadInput, match="differs from the UKI on the OS disk's ESP"):
        build(tmp_path, deps(tmp_path, os_disk252, uki252.read_bytes() + b"x"))


def test_explain_prints_each_event_and_the_value(built):
    text = predict.explain(4, built)
    assert "Calling EFI Application" in text and "Authenticode SHA-256 of the UKI" in text
    assert load(built)["pcrs"]["4"]["expected"][0] in text and "WARNING" not in text
    assert "LoadOptions" in predict.explain(9, built)
    assert "not in measurements.json" in predict.explain(8, built)
    assert "TLS root CA" in predict.explain(15, built)


# --- the command line: bad input is one line and exit 2, nothing written ---

def run_measure_disk(disk, tmp_path, *extra):
    out = tmp_path / "out"
    res = mb("measure-disk", disk, "--roothash", ROOTHASH, "-o", out, *extra, cwd=tmp_path)
    return res, out


def test_measure_disk_command(os_disk252, tmp_path, built):
    res, _ = run_measure_disk(os_disk252, tmp_path, "--json")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["pcrs"] == load(built)["pcrs"]


@pytest.fixture(scope="module")
def bad_inputs(uki252, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bad")
    uki = uki252.read_bytes()
    (tmp / "random.bin").write_bytes(bytes(range(256)) * 4096)
    return {
        "not a disk image": (tmp / "random.bin", "not a GPT disk image"),
        "no ESP": (U.make_disk(tmp / "noesp.raw", None, root_mb=1), "expected one EFI System Partition, found 0"),
        "no UKI": (U.make_disk(tmp / "nouki.raw", U.make_fat(tmp / "nouki.fat", {"/EFI/Linux/x.efi": uki[:4096]})),
                   "no UKI at /EFI/BOOT/BOOTX64.EFI"),
        "truncated PE": (U.os_disk(tmp, uki[:len(uki) - 5000], name="cut.raw"), "section .linux is truncated"),
        "extra ESP file": (U.os_disk(tmp, uki, name="cred.raw", extra_files={"/loader/credentials/a.cred": b"x"}),
                           "besides the UKI"),
    }


@pytest.mark.parametrize("case", ["not a disk image", "no ESP", "no UKI", "truncated PE", "extra ESP file"])
def test_bad_input_is_one_line_exit_2(bad_inputs, case, tmp_path):
    disk, message = bad_inputs[case]
    res, out = run_measure_disk(disk, tmp_path)
    assert res.returncode == 2, (res.returncode, res.stderr)
    assert res.stderr.count("\n") == 1 and message in res.stderr and str(disk) in res.stderr, res.stderr
    assert not (out / "measurements.json").exists()


def test_unknown_platform_exit_2(os_disk252, tmp_path):
    res, out = run_measure_disk(os_disk252, tmp_path, "--platform", "amiga")
    assert res.returncode == 2 and res.stderr.count("\n") == 1 and "unknown platform 'amiga'" in res.stderr
    assert not (out / "measurements.json").exists()


def test_explain_needs_a_pcr_index(tmp_path):
    from tests.conftest import new_project

    project = new_project(tmp_path / "p")
    res = mb("measurements", "--project", project, "--explain", "x")
    assert res.returncode == 2 and "is not a PCR index" in res.stderr
    res = mb("plan", "measurements", "--project", project, "--json")
    assert res.returncode == 0, res.stderr
    assert [r["stage"] for r in json.loads(res.stdout)["stages"]][-1] == "measurements"


def test_bad_roothash_exit_2(os_disk252, tmp_path):
    res = mb("measure-disk", os_disk252, "--roothash", "xyz", "-o", tmp_path / "out")
    assert res.returncode == 2 and res.stderr.count("\n") == 1 and "roothash: not 64 hex digits" in res.stderr


def test_appdisk_record_must_match_the_app_disk(os_disk252, uki252, tmp_path):
    dep = deps(tmp_path, os_disk252, uki252.read_bytes())
    (dep["appdisk"].dir / "appdisk.json").write_text(json.dumps({"roothash": OTHER_ROOTHASH}))
    with pytest.raises(BadInput, match="are not the halves of roothash"):
        build(tmp_path, dep)
