from pathlib import Path

import pytest

from pipeline.errors import BadInput
from pipeline.measure import pcr11, pe
from pipeline.measure.pcr import Simulator
from pipeline.run import run
from tests import ukifixture
from tests.conftest import need


def systemd_measure(uki: pe.PeImage, sections: list[str], phases: tuple[str, ...], work: Path) -> str:
    """Independent oracle: systemd-measure calculate on exactly the given sections."""
    need(ukifixture.MEASURE)
    args = []
    for name in sections:
        f = work / name.lstrip(".")
        f.write_bytes(uki.section_data(name))
        args.append(f"--{name.lstrip('.')}={f}")
    out = run([ukifixture.MEASURE, "calculate", "--bank=sha256", *args, "--phase=" + ":".join(phases)]).text
    return out.strip().split("=", 1)[1]


@pytest.mark.parametrize("phases", [(), ("enter-initrd", "leave-initrd")])
@pytest.mark.parametrize("which,sections", [
    ("uki252", [".linux", ".osrel", ".cmdline", ".initrd"]),  # the 252 stub skips .uname and .sbat
    ("uki254", [".linux", ".osrel", ".cmdline", ".initrd", ".uname", ".sbat"]),
])
def test_equals_systemd_measure(which, sections, phases, request, tmp_path):
    uki = pe.PeImage(request.getfixturevalue(which).read_bytes(), which)
    major, _ = pe.stub_version(uki)
    sim = Simulator()
    value = pcr11.predict(sim, uki, major, phases)
    assert value.hex() == systemd_measure(uki, sections, phases, tmp_path)
    names = [e.description.split()[-1] for e in sim.log(11) if "section name" in e.description]
    assert names == sections
    assert len(sim.log(11)) == 2 * len(sections) + len(phases)


def test_252_does_not_measure_uname_but_254_does(uki252):
    assert ".uname" not in pcr11.measured_sections(252)
    assert ".uname" in pcr11.measured_sections(254) and ".sbat" in pcr11.measured_sections(253)
    assert ".ucode" in pcr11.measured_sections(256)
    assert ".pcrsig" not in pcr11.measured_sections(254)
    uki = pe.PeImage(uki252.read_bytes(), "u")
    assert uki.section_data(".uname"), "fixture should carry .uname so the 252 rule is exercised"


@pytest.mark.parametrize("major", [251, 257])
def test_unknown_stub_versions_are_refused(major):
    with pytest.raises(BadInput, match=f"systemd-stub {major} is not supported"):
        pcr11.measured_sections(major)


def test_one_byte_of_a_measured_section_changes_pcr11(uki252):
    data = uki252.read_bytes()
    base = pcr11.predict(Simulator(), pe.PeImage(data, "u"), 252)
    s = pe.PeImage(data, "u").section(".cmdline")
    changed = bytearray(data)
    changed[s.raw_offset + 5] ^= 1
    assert pcr11.predict(Simulator(), pe.PeImage(bytes(changed), "u"), 252) != base
    s = pe.PeImage(data, "u").section(".uname")  # not measured by 252
    changed = bytearray(data)
    changed[s.raw_offset + 1] ^= 1
    assert pcr11.predict(Simulator(), pe.PeImage(bytes(changed), "u"), 252) == base
