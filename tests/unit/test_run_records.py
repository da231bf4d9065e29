"""`.mithril/run/` (issue 19): a run record names the EK CA and the measurements `connect` trusts,
so only the user's own records, in a folder only the user can enter, are read; `profile` is a
plain name (never a path out of out/)."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from pipeline import attest
from pipeline.errors import BadInput
from tests.conftest import new_project

URL = "https://127.0.0.1:8443"
CA = b"-----BEGIN CERTIFICATE-----\nstand-in\n-----END CERTIFICATE-----\n"


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    return new_project(tmp_path_factory.mktemp("p") / "p")


@pytest.fixture
def project(template, tmp_path) -> Path:
    import shutil

    dest = tmp_path / "p"
    shutil.copytree(template, dest)
    return dest


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_records_are_private_and_found(project):
    old = os.umask(0o022)
    try:
        (project / ".mithril/run").mkdir(parents=True, mode=0o755)  # made by an older version
        path = attest.write_run_record(project, "demo", URL, CA)
    finally:
        os.umask(old)
    assert mode(path.parent) == 0o700 and mode(path) == 0o600
    target = attest.resolve_target(URL + "/", None, None, project)
    assert target.ek_ca == CA and target.measurements == project / "out/demo/measurements.json"


def _record(project: Path, name: str = "demo", **fields) -> Path:
    path = attest.write_run_record(project, "demo", URL, CA)
    if fields or name != "demo":
        doc = {**json.loads(path.read_text()), **fields}
        path.unlink()
        path = path.with_name(f"{name}.json")
        path.write_text(json.dumps(doc))
        path.chmod(0o600)
    return path


@pytest.mark.parametrize("damage, match", [
    (lambda p: p.chmod(0o666), "lets others write it"),
    (lambda p: p.chmod(0o620), "lets others write it"),
    (lambda p: p.parent.chmod(0o777), "lets others write it"),
    (lambda p: p.parent.chmod(0o770), "lets others write it"),
])
def test_records_others_can_write_are_refused(project, damage, match):
    path = _record(project)
    damage(path)
    with pytest.raises(BadInput, match=match) as e:
        attest.resolve_target(URL + "/", None, None, project)
    assert e.value.where in (str(path), str(path.parent))


def test_records_of_another_user_are_refused(project, monkeypatch):
    path = _record(project)
    monkeypatch.setattr(os, "getuid", lambda: path.stat().st_uid + 1)  # as seen by someone else
    with pytest.raises(BadInput, match="not by you"):
        attest.resolve_target(URL + "/", None, None, project)


def test_a_symlinked_record_is_refused(project, tmp_path):
    elsewhere = tmp_path / "planted.json"
    elsewhere.write_text(json.dumps({"url": URL, "profile": "demo", "ek_ca": CA.decode()}))
    run = project / ".mithril/run"
    run.mkdir(parents=True, mode=0o700)
    (run / "demo.json").symlink_to(elsewhere)
    with pytest.raises(BadInput, match="cannot open the run record"):
        attest.resolve_target(URL + "/", None, None, project)


@pytest.mark.parametrize("profile", ["../../x", "/etc", "..", "a/b", ".hidden", "", 5])
def test_profile_must_be_a_plain_name(project, profile):
    _record(project, profile=profile)
    with pytest.raises(BadInput, match="not a plain profile name"):
        attest.resolve_target(URL + "/", None, None, project)
    if isinstance(profile, str):
        with pytest.raises(BadInput, match="not a plain profile name"):
            attest.write_run_record(project, profile, URL, CA)
