"""The dm-verity disk recipe both disk stages use: squashfs, hash tree, repart assembly, and the
check after assembly (roothash halves as partition UUIDs, partitions holding exactly the images)."""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path

import pytest

from pipeline import verity_build
from pipeline.errors import BadInput, VerificationFailed
from pipeline.measure import gpt, verity
from tests.conftest import REPO, need

SEED = uuid.UUID("5c8a2e4f-6d1b-4a7e-9b3c-2f0e1d4c5b6a")
ENV = {"SOURCE_DATE_EPOCH": "1700000000", "SYSTEMD_LOG_LEVEL": "warning"}
LABELS = ("app", "app-verity")


def make_disk(tmp_path: Path, repart: Path = REPO / "appdisk" / "repart.d"):
    """A small app-style disk from appdisk/repart.d (or another repart.d): (disk, images)."""
    need("mksquashfs", "systemd-repart")
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "hello").write_text("hello\n" * 5000)
    source = tmp_path / "appdisk"
    shutil.copytree(repart, source / "repart.d")
    data = verity_build.squashfs(tree, tmp_path / "data.img", ("-all-root", "-no-xattrs"), ENV)
    images = verity_build.hash_tree(data, tmp_path / "hash.img", SEED)
    data_uuid, hash_uuid = images.uuids
    values = {"data_uuid": data_uuid, "hash_uuid": hash_uuid, "data_image": images.data, "hash_image": images.hash,
              "data_size": images.data.stat().st_size, "hash_size": images.hash.stat().st_size}
    disk = tmp_path / "disk.raw"
    verity_build.assemble(disk, source, values, tmp_path / "defs", SEED, ENV, ["--json=off"])
    return disk, images


def test_disk_holds_the_images_under_the_roothash_halves(tmp_path):
    disk, images = make_disk(tmp_path)
    assert images.data.stat().st_size % verity_build.BLOCK == 0
    table = verity_build.check(disk, images, LABELS, "appdisk")
    data, hashes = table.by_label("app", "d"), table.by_label("app-verity", "d")
    assert data.uuid.hex + hashes.uuid.hex == images.roothash.hex()
    with open(disk, "rb") as f:
        params, bad = verity.verify(f, data.offset, f, hashes.offset, images.roothash)
    assert bad is None and params == images.params


@pytest.mark.parametrize("label", LABELS)
def test_check_finds_a_changed_byte(tmp_path, label):
    disk, images = make_disk(tmp_path)
    p = gpt.read_table(disk).by_label(label, "d")
    with open(disk, "r+b") as f:
        f.seek(p.offset + 100)
        b = f.read(1)
        f.seek(p.offset + 100)
        f.write(bytes([b[0] ^ 1]))
    with pytest.raises(VerificationFailed, match=f"partition '{label}' does not hold the expected blocks"):
        verity_build.check(disk, images, LABELS, "appdisk")


def test_check_refuses_uuids_that_are_not_the_roothash_halves(tmp_path):
    repart = tmp_path / "src"
    shutil.copytree(REPO / "appdisk" / "repart.d", repart)
    conf = repart / "20-app-verity.conf.j2"
    conf.write_text(conf.read_text().replace("UUID={{ hash_uuid }}", f"UUID={uuid.UUID(int=1)}"))
    disk, images = make_disk(tmp_path, repart)
    with pytest.raises(BadInput, match="appdisk/repart.d: the assembled disk's partitions"):
        verity_build.check(disk, images, LABELS, "appdisk")
