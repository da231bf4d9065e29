import re

import pytest

from pipeline.errors import BadInput
from pipeline.measure import pe
from pipeline.run import run
from tests.conftest import need


def pesign_hash(path) -> str:
    """Independent oracle: pesign's Authenticode digest."""
    need("pesign")
    out = run(["pesign", "--hash", "-i", path]).text
    m = re.search(r"hash: ([0-9a-f]{64})", out)
    assert m, out
    return m.group(1)


@pytest.mark.parametrize("which", ["uki252", "uki254"])
def test_authenticode_of_uki_and_kernel_equals_pesign(which, request, tmp_path):
    path = request.getfixturevalue(which)
    uki = pe.PeImage(path.read_bytes(), str(path))
    assert uki.authenticode().hex() == pesign_hash(path)
    linux = pe.kernel(uki)
    (tmp_path / "vmlinuz").write_bytes(linux.data)
    assert linux.authenticode().hex() == pesign_hash(tmp_path / "vmlinuz")


def test_kernel_is_the_linux_section_as_mapped(uki252, uki_parts):
    uki = pe.PeImage(uki252.read_bytes(), "uki")
    assert pe.kernel(uki).data == uki_parts.kernel.read_bytes()


def test_trailing_data_is_hashed_like_pesign(uki252, tmp_path):
    p = tmp_path / "t.efi"
    p.write_bytes(uki252.read_bytes() + b"trailing bytes!")
    assert pe.PeImage(p.read_bytes(), "t").authenticode().hex() == pesign_hash(p)
    assert pe.PeImage(p.read_bytes(), "t").authenticode() != pe.PeImage(uki252.read_bytes(), "u").authenticode()


def test_stub_version_from_sdmagic(uki252, uki254):
    major, full = pe.stub_version(pe.PeImage(uki252.read_bytes(), "u"))
    assert major == 252 and full.startswith("252.")
    assert pe.stub_version(pe.PeImage(uki254.read_bytes(), "u"))[0] == 254


def test_section_data_zero_fills_past_raw_data():
    s = pe.Section(".x", 0x1000, 8, 0, 4)
    img = object.__new__(pe.PeImage)
    img.data, img.sections = b"abcdEFGH", (s,)
    assert img.section_data(".x") == b"abcd" + bytes(4)
    assert img.section_data(".nope") is None


def test_truncated_sections_are_bad_input(uki252):
    data = uki252.read_bytes()
    with pytest.raises(BadInput, match=r"section \.linux is truncated"):
        pe.PeImage(data[:len(data) - 4096], "cut.efi")


@pytest.mark.parametrize("data", [b"", b"MZ" + bytes(100), bytes(4096), b"#!/bin/sh\necho hi\n"])
def test_not_a_pe_is_bad_input(data):
    with pytest.raises(BadInput, match="cut.efi"):
        pe.PeImage(data, "cut.efi")


def test_kernel_alone_is_not_a_uki(uki_parts):
    kernel = pe.PeImage(uki_parts.kernel.read_bytes(), "vmlinuz")
    with pytest.raises(BadInput, match="no .linux section"):
        pe.kernel(kernel)
    with pytest.raises(BadInput, match="no .sdmagic"):
        pe.stub_version(kernel)
