import pytest

from pipeline.errors import BadInput
from pipeline.measure import pcr12_13
from pipeline.measure.pcr import ZERO, Simulator


def test_only_the_uki_gives_zero():
    sim = Simulator()
    assert pcr12_13.predict(sim, ["/EFI/BOOT/BOOTX64.EFI"], "esp") == {12: ZERO, 13: ZERO}
    assert sim.events == []


@pytest.mark.parametrize("files,match", [
    ([], "no UKI"),
    (["/EFI/Linux/other.efi"], "no UKI"),
    (["/EFI/BOOT/BOOTX64.EFI", "/loader/credentials/x.cred"], "besides the UKI"),
    (["/EFI/BOOT/BOOTX64.EFI", "/EFI/BOOT/BOOTX64.EFI.extra.d/a.raw"], "besides the UKI"),
])
def test_anything_else_on_the_esp_is_refused(files, match):
    with pytest.raises(BadInput, match=match):
        pcr12_13.predict(Simulator(), files, "esp")
