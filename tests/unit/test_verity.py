import hashlib
import io
import os
import shutil
import uuid

import pytest

from pipeline.errors import BadInput
from pipeline.measure import verity
from pipeline.run import run

SEED = uuid.UUID("5c8a2e4f-6d1b-4a7e-9b3c-2f0e1d4c5b6a")


def params(blocks: int, bs: int = 4096) -> verity.Params:
    salt, u = verity.salt_and_uuid(SEED)
    return verity.Params(blocks, salt, u, bs, bs)


@pytest.mark.parametrize("blocks,bs", [(2, 4096), (128, 4096), (129, 4096), (1000, 4096), (300, 512)])
def test_tree_is_byte_identical_with_veritysetup(tmp_path, blocks, bs):
    if not shutil.which("veritysetup", path=os.environ["PATH"] + ":/usr/sbin:/sbin"):
        pytest.skip("needs veritysetup (cryptsetup-bin, installed by scripts/setup.sh)")
    data = tmp_path / "data"
    data.write_bytes(os.urandom(blocks * bs))
    p = params(blocks, bs)
    with open(data, "rb") as f:
        root, image = verity.build_tree(f, 0, p)
    out = run(["veritysetup", "format", f"--data-block-size={bs}", f"--hash-block-size={bs}",
               f"--salt={p.salt.hex()}", f"--uuid={uuid.UUID(bytes=p.uuid)}", data, tmp_path / "hash"]).text
    assert f"Root hash:      \t{root.hex()}" in out
    assert (tmp_path / "hash").read_bytes() == image
    assert len(image) == p.hash_size


def test_salt_and_uuid_follow_systemd_255_derivation():
    salt, u = verity.salt_and_uuid(SEED)
    import hmac
    assert salt == hmac.new(SEED.bytes, b"verity-salt", hashlib.sha256).digest()
    assert uuid.UUID(bytes=u).version == 4
    assert verity.salt_and_uuid(uuid.UUID(int=1)) != (salt, u)


def _tree(blocks=600):
    data = bytes(range(256)) * (16 * blocks)
    p = params(blocks)
    root, image = verity.build_tree(io.BytesIO(data), 0, p)
    return data, image, root


def test_verify_accepts_good_tree_and_reports_first_bad_block():
    data, image, root = _tree()
    assert verity.verify(io.BytesIO(data), 0, io.BytesIO(image), 0, root)[1] is None
    bad = bytearray(data)
    bad[4096 * 321 + 7] ^= 0x01
    mismatch = verity.verify(io.BytesIO(bytes(bad)), 0, io.BytesIO(image), 0, root)[1]
    assert (mismatch.area, mismatch.block) == ("data", 321)
    badh = bytearray(image)
    badh[4096 + 4096 * 2 + 100] ^= 0x80  # a level-0 hash block (after the superblock and the top block)
    mismatch = verity.verify(io.BytesIO(data), 0, io.BytesIO(bytes(badh)), 0, root)[1]
    assert mismatch.area == "hash" and mismatch.level == 0


def test_verify_with_offsets_and_wrong_root():
    data, image, root = _tree(50)
    disk = b"\0" * 8192 + data + image
    assert verity.verify(io.BytesIO(disk), 8192, io.BytesIO(disk), 8192 + len(data), root)[1] is None
    assert verity.verify(io.BytesIO(disk), 8192, io.BytesIO(disk), 8192 + len(data), bytes(32))[1] is not None


@pytest.mark.parametrize("mutate,msg", [
    (lambda sb: b"notverit" + sb[8:], "magic"),
    (lambda sb: sb[:8] + (2).to_bytes(4, "little") + sb[12:], "version"),
    (lambda sb: sb[:32] + b"md5".ljust(32, b"\0") + sb[64:], "algorithm"),
    (lambda sb: sb[:64] + (1000).to_bytes(4, "little") + sb[68:], "block size"),
    (lambda sb: sb[:10], "magic"),
])
def test_bad_superblocks_are_bad_input(mutate, msg):
    sb = verity.superblock(params(10))
    with pytest.raises(BadInput, match=msg):
        verity.parse_superblock(mutate(sb), "disk.raw")
