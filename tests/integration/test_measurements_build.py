"""measurements on a real demo build (mkosi OS image + app disk)."""

import json

import jsonschema
import pytest

from mithril_client import measurements as compare
from pipeline.measure import pcr, predict
from pipeline.project import REPO
from tests.conftest import mb

pytestmark = pytest.mark.slow


def test_measurements_of_the_demo_build(demo_build, demo_project):
    doc = json.loads((demo_build / "measurements.json").read_text())
    jsonschema.validate(doc, json.loads((REPO / "measurements/schema/measurements.v1.json").read_text()))
    m = compare.parse_measurements(doc, "measurements.json")
    assert {4, 11, 12, 13, 15} <= set(m.pcrs)
    assert m.app_roothash == json.loads((demo_build / "appdisk.json").read_text())["roothash"]
    events = [pcr.Event(**e) for e in json.loads((demo_build / "eventlog.json").read_text())["events"]]
    for index in (4, 9, 11, 15):
        if str(index) in doc["pcrs"]:
            assert pcr.replay(events, index).hex() in doc["pcrs"][str(index)]["expected"]
    res = mb("measurements", "--project", demo_project, "--unlocked", "--explain", "4", "--json")
    assert res.returncode == 0, res.stderr
    assert [e["type"] for e in json.loads(res.stdout)][:2] == ["EV_EFI_ACTION", "EV_SEPARATOR"]
    assert "Authenticode SHA-256 of the UKI" in predict.explain(4, demo_build)
