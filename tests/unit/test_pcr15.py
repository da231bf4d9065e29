import hashlib

import pytest

from pipeline.errors import BadInput
from mithril_client import tpm2
from mithril_client.measurements import compare_pcrs, parse_measurements
from pipeline.measure import pcr15
from pipeline.measure.pcr import Simulator

ROOT = bytes.fromhex("5b1f9a2c" * 8)


def test_golden_roothash_then_zero_sentinel():
    step1 = hashlib.sha256(bytes(32) + ROOT).digest()
    want = hashlib.sha256(step1 + bytes(32)).digest()
    sim = Simulator()
    assert pcr15.predict(sim, ROOT) == want
    assert [e.digest for e in sim.log(15)] == [ROOT.hex(), "00" * 32]


def test_ca_replay_matches_the_verifier():
    value = pcr15.predict(Simulator(), ROOT)
    pem = b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
    want = hashlib.sha256(value + hashlib.sha256(pem).digest()).digest()
    assert tpm2.with_ca(value, pem) == want
    m = parse_measurements({"version": 1, "mode": "production", "pcrs": {"15": {"expected": [value.hex()]}}}, "m")
    assert [r.result for r in compare_pcrs(m, {15: want.hex()}, pem)] == ["ok"]
    assert [r.result for r in compare_pcrs(m, {15: want.hex()}, pem + b"\n")] == ["MISMATCH"]


def test_another_app_disk_changes_pcr15():
    assert pcr15.predict(Simulator(), ROOT) != pcr15.predict(Simulator(), bytes(31) + b"\1")


def test_wrong_length_is_bad_input():
    with pytest.raises(BadInput, match="roothash"):
        pcr15.predict(Simulator(), b"\1" * 16)
