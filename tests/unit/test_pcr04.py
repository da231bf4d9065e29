import hashlib
from pathlib import Path

from pipeline.measure import pcr04, pe
from pipeline.measure.pcr import Simulator
from tests.unit.test_pe import pesign_hash

ACTION = b"Calling EFI Application from Boot Option"


def firmware():
    return [pcr04.FirmwareEvent("EV_EFI_ACTION", "call", hashlib.sha256(ACTION).digest()),
            pcr04.FirmwareEvent("EV_SEPARATOR", "sep", hashlib.sha256(bytes(4)).digest())]


def chain(*digests: bytes) -> bytes:
    v = bytes(32)
    for d in digests:
        v = hashlib.sha256(v + d).digest()
    return v


def predict(data: bytes) -> tuple[bytes, Simulator]:
    uki = pe.PeImage(data, "uki")
    sim = Simulator()
    return pcr04.predict(sim, firmware(), uki, pe.kernel(uki)), sim


def test_golden_sequence_from_pesign(uki252, tmp_path):
    """Expected value derived independently: hashlib over pesign's digests."""
    uki = pe.PeImage(uki252.read_bytes(), "uki")
    (tmp_path / "k").write_bytes(pe.kernel(uki).data)
    want = chain(hashlib.sha256(ACTION).digest(), hashlib.sha256(bytes(4)).digest(),
                 bytes.fromhex(pesign_hash(uki252)), bytes.fromhex(pesign_hash(tmp_path / "k")))
    value, sim = predict(uki252.read_bytes())
    assert value == want
    assert [e.type for e in sim.log(4)] == ["EV_EFI_ACTION", "EV_SEPARATOR", "EV_EFI_BOOT_SERVICES_APPLICATION",
                                            "EV_EFI_BOOT_SERVICES_APPLICATION"]


def test_well_known_action_digest():
    # as printed by tpm2_eventlog for every EDK2 boot
    assert hashlib.sha256(ACTION).hexdigest() == "3d6772b4f84ed47595d72a2c4c5ffd15f5bb72c7507fe26f2aaee2c69d5633ba"


def test_one_byte_of_the_uki_changes_pcr4(uki252: Path):
    data = bytearray(uki252.read_bytes())
    uki = pe.PeImage(bytes(data), "uki")
    base, _ = predict(bytes(data))
    for name in (".cmdline", ".linux"):
        s = uki.section(name)
        changed = bytearray(data)
        changed[s.raw_offset + 10] ^= 1
        assert predict(bytes(changed))[0] != base, name
