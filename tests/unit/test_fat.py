import os
import random

import pytest

from pipeline.errors import BadInput
from pipeline.measure import fat
from pipeline.run import SYSTEM_PATH, run
from tests import ukifixture as U

FILES = {
    "/EFI/BOOT/BOOTX64.EFI": random.Random(1).randbytes(300_000),
    "/A file with a long name.txt": b"hello",
    "/dir/Sub Dir/x.bin": bytes(5000),
    "/dir/empty": b"",
    "/loader/loader.conf": b"timeout 0\n",
}


def mtools_read(img, path) -> bytes:
    """Independent oracle: mtools' own extraction."""
    return run(["mcopy", "-n", "-i", img, "::" + path, "-"],
               extra_env={"PATH": SYSTEM_PATH, "MTOOLS_SKIP_CHECK": "1"}).stdout


@pytest.fixture(scope="module", params=[12, 16, 32])
def image(request, tmp_path_factory):
    size = {12: 2, 16: 16, 32: 40}[request.param]
    img = tmp_path_factory.mktemp(f"fat{request.param}") / "esp.img"
    U.make_fat(img, FILES, fat=request.param, size_mb=size, cluster_sectors=1 if request.param != 32 else 0)
    return request.param, img


def test_lists_every_file_with_long_names(image):
    kind, img = image
    with fat.FatFs(img) as fs:
        assert fs.kind == kind
        assert fs.walk() == sorted(FILES)


def test_extracts_the_same_bytes_as_mtools(image):
    _, img = image
    with fat.FatFs(img) as fs:
        for path, data in FILES.items():
            got = fs.read(path)
            assert got == data
            assert got == mtools_read(img, path)
        assert fs.read("/efi/boot/bootx64.efi") == FILES["/EFI/BOOT/BOOTX64.EFI"]  # FAT ignores case


def test_fragmented_file(tmp_path):
    U.need("mdel")
    img = U.make_fat(tmp_path / "esp.img", {f"/f{i}": bytes([i]) * 3000 for i in range(12)}, fat=16, size_mb=16,
                     cluster_sectors=1)
    for i in range(0, 12, 2):
        run(["mdel", "-i", img, f"::/f{i}"], extra_env={"PATH": SYSTEM_PATH, "MTOOLS_SKIP_CHECK": "1"})
    big = tmp_path / "big"
    big.write_bytes(os.urandom(40_000))
    run(["mcopy", "-i", img, big, "::/big"], extra_env={"PATH": SYSTEM_PATH, "MTOOLS_SKIP_CHECK": "1"})
    with fat.FatFs(img) as fs:
        e = fs.lookup("/big")
        assert len(fs._runs(e.cluster, None)) > 1, "mtools did not fragment the file; the test proves nothing"
        assert fs.read("/big") == big.read_bytes()


def test_missing_file_is_bad_input(image):
    _, img = image
    with fat.FatFs(img) as fs, pytest.raises(BadInput, match="no file /nope"):
        fs.read("/nope")


def test_not_fat(tmp_path):
    p = tmp_path / "zero.img"
    p.write_bytes(bytes(1 << 20))
    with pytest.raises(BadInput, match="no FAT boot sector"):
        fat.FatFs(p)


def test_truncated_image(image, tmp_path):
    _, img = image
    cut = tmp_path / "cut.img"
    cut.write_bytes(img.read_bytes()[:img.stat().st_size // 2])
    with pytest.raises(BadInput), fat.FatFs(cut) as fs:
        fs.walk()
        for path in FILES:
            fs.read(path)


def test_open_esp_needs_a_gpt_disk_with_one_esp(tmp_path, os_disk252, uki252):
    with fat.open_esp(os_disk252) as fs:
        assert fs.walk() == ["/EFI/BOOT/BOOTX64.EFI"]
        assert fs.read("/EFI/BOOT/BOOTX64.EFI") == uki252.read_bytes()
    with pytest.raises(BadInput, match="not a GPT disk image"):
        fat.open_esp(uki252)
    no_esp = U.make_disk(tmp_path / "noesp.raw", None, root_mb=1)
    with pytest.raises(BadInput, match="expected one EFI System Partition, found 0"):
        fat.open_esp(no_esp)
