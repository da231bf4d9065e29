import hashlib

from pipeline.measure import pcr09, pe
from pipeline.measure.pcr import Simulator
from tests import ukifixture as U


def test_golden_from_the_inputs_given_to_ukify(uki252, uki_parts):
    """Derived from what went into ukify (not from the UKI): LoadOptions, then the initrd."""
    uki = pe.PeImage(uki252.read_bytes(), "u")
    assert pcr09.unsupported(uki, 252) is None
    options = hashlib.sha256((U.CMDLINE + "\0").encode("utf-16-le")).digest()
    initrd = hashlib.sha256(uki_parts.initrd.read_bytes()).digest()
    want = hashlib.sha256(hashlib.sha256(bytes(32) + options).digest() + initrd).digest()
    sim = Simulator()
    assert pcr09.predict(sim, uki) == want
    assert [e.type for e in sim.log(9)] == ["EV_EVENT_TAG", "EV_EVENT_TAG"]


def test_only_the_confirmed_stub_and_kernel_are_predicted(uki252, uki254, uki_parts, tmp_path):
    assert "systemd-stub" in pcr09.unsupported(pe.PeImage(uki254.read_bytes(), "u"), 254)
    other = U.build_uki(uki_parts, tmp_path / "k.efi", uki_parts.stub252, extra=["--uname=6.12.0-1-amd64"])
    assert "kernels" in pcr09.unsupported(pe.PeImage(other.read_bytes(), "u"), 252)
    assert b"6.12.0" in bytes(pe.PeImage(other.read_bytes(), "u").section_data(".uname"))


def test_cmdline_and_initrd_changes_change_pcr9(uki_parts, tmp_path):
    a = pe.PeImage(U.build_uki(uki_parts, tmp_path / "a.efi", uki_parts.stub252, cmdline="console=ttyS0 a").read_bytes(), "a")
    b = pe.PeImage(U.build_uki(uki_parts, tmp_path / "b.efi", uki_parts.stub252, cmdline="console=ttyS0 b").read_bytes(), "b")
    assert pcr09.predict(Simulator(), a) != pcr09.predict(Simulator(), b)
