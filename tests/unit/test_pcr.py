import hashlib

import pytest

from pipeline.measure import pcr

SEPARATOR_ONLY = "3d458cfe55cc03ea1f443f1562beec8df51c75e14a9fcf9a7234a13f198e7969"  # Azure PCR 1-3


def test_extend_is_sha256_of_old_and_digest():
    d = hashlib.sha256(b"x").digest()
    assert pcr.extend(pcr.ZERO, d) == hashlib.sha256(bytes(32) + d).digest()


def test_separator_only_value_matches_the_published_one():
    assert pcr.extend(pcr.ZERO, hashlib.sha256(bytes(4)).digest()).hex() == SEPARATOR_ONLY


def test_extend_refuses_a_wrong_length_digest():
    with pytest.raises(ValueError):
        pcr.extend(pcr.ZERO, b"short")


def test_simulator_logs_in_order_and_replays():
    sim = pcr.Simulator()
    sim.measure(4, b"a", "EV_X", "first")
    sim.measure(7, b"b", "EV_Y", "other pcr")
    sim.extend(4, hashlib.sha256(b"c").digest(), "EV_Z", "second")
    sim.touch(12)
    assert [e.description for e in sim.log(4)] == ["first", "second"]
    want = pcr.extend(pcr.extend(pcr.ZERO, hashlib.sha256(b"a").digest()), hashlib.sha256(b"c").digest())
    assert sim.value(4) == want == pcr.replay(sim.events, 4)
    assert sim.value(12) == pcr.ZERO and 12 in sim.values
    assert sim.events[0].as_json() == {"pcr": 4, "type": "EV_X", "description": "first",
                                       "digest": hashlib.sha256(b"a").hexdigest()}
