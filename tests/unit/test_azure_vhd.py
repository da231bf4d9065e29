"""The fixed-VHD footer: qemu-img's bytes when given its timestamp and id; reproducible otherwise."""

from __future__ import annotations

import os

import pytest

from pipeline.platforms.azure import vhd
from pipeline.errors import BadInput
from pipeline.run import run
from tests.conftest import need

EPOCH = 1704067200
DIGEST = "ab" * 32


def _sparse_disk(path, size, writes):
    with open(path, "wb") as f:
        f.truncate(size)
        for off, data in writes:
            f.seek(off)
            f.write(data)


def test_footer_equals_qemu_img(tmp_path):
    need("qemu-img")
    raw = tmp_path / "d.raw"
    _sparse_disk(raw, 3 * vhd.MiB + 4096, [(1000, b"hello"), (2 * vhd.MiB, b"\x01" * 512)])
    size = vhd.padded_size(raw.stat().st_size)
    assert size == 20 * vhd.MiB  # Azure's floor: uploadSizeBytes >= 20 MiB + 512
    os.truncate(raw, size)  # qemu pads only to 512; we give it the 1 MiB-padded disk
    run(["qemu-img", "convert", "-f", "raw", "-O", "vpc", "-o", "subformat=fixed,force_size", raw, tmp_path / "q.vhd"])
    qemu = (tmp_path / "q.vhd").read_bytes()
    assert len(qemu) == size + 512
    theirs = vhd.parse_footer(qemu[-512:])
    ours = vhd.footer(size, theirs["timestamp"], theirs["unique_id"])
    assert ours == qemu[-512:]
    assert theirs["geometry"] == (65535, 16, 255) and theirs["creator"] == "qem2" and theirs["disk_type"] == 2


def test_write_vhd_is_reproducible_sparse_and_padded(tmp_path):
    raw = tmp_path / "d.raw"
    _sparse_disk(raw, 64 * vhd.MiB + 512, [(0, b"boot"), (40 * vhd.MiB, b"x" * 8192)])
    a = vhd.write_vhd(raw, tmp_path / "a.vhd", DIGEST, EPOCH)
    vhd.write_vhd(raw, tmp_path / "b.vhd", DIGEST, EPOCH)
    da, db = (tmp_path / "a.vhd").read_bytes(), (tmp_path / "b.vhd").read_bytes()
    assert da == db
    assert a["data_size"] == 65 * vhd.MiB and len(da) == a["vhd_size"] == 65 * vhd.MiB + 512
    assert da[:a["data_size"]] == raw.read_bytes().ljust(a["data_size"], b"\0")
    f = vhd.parse_footer(da[-512:])
    assert f["timestamp"] == EPOCH and f["size"] == 65 * vhd.MiB
    assert f["unique_id"] == vhd.unique_id(DIGEST) != vhd.unique_id("cd" * 32)
    assert os.stat(tmp_path / "a.vhd").st_blocks * 512 < 4 * vhd.MiB  # holes stayed holes


def test_bad_footer_is_detected():
    good = vhd.footer(vhd.MiB, EPOCH, bytes(16))
    with pytest.raises(ValueError, match="checksum"):
        vhd.parse_footer(good[:100] + b"\x01" + good[101:])
    with pytest.raises(ValueError):
        vhd.footer(1000, EPOCH, bytes(16))


def test_sizes_azure_accepts():
    """uploadSizeBytes: whole MiB + 512, between 20 MiB + 512 and 32 TiB + 512 (Azure's documented limits)."""
    for raw, data in ((1, 20 * vhd.MiB), (20 * vhd.MiB, 20 * vhd.MiB), (20 * vhd.MiB + 1, 21 * vhd.MiB),
                      (64 * vhd.MiB + 512, 65 * vhd.MiB)):
        assert vhd.padded_size(raw) == data and (data + 512) >= 20972032 and data % vhd.MiB == 0
    with pytest.raises(BadInput, match="32 TiB"):
        vhd.padded_size(32 * (1 << 40) + 1)
