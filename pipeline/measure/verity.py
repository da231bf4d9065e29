"""dm-verity (format version 1, hash type 1) in pure Python: build and check hash trees.

On-disk layout of a hash partition (as veritysetup and systemd-repart write it): a 512-byte
superblock, padded to one hash block; then the hash tree, top level first; each level is a run
of hash blocks holding sha256(salt || child block) entries, zero-padded; the rest is zero.
The root hash is sha256(salt || the single top-level block).
"""

from __future__ import annotations

import hashlib
import hmac
import struct
import uuid as uuidlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import BinaryIO

from ..errors import BadInput

SUPERBLOCK_SIZE = 512
MAGIC = b"verity\0\0"
DIGEST = 32
CHUNK = 4 << 20  # bytes read per step; bounds memory


@dataclass(frozen=True)
class Params:
    data_blocks: int
    salt: bytes
    uuid: bytes = bytes(16)
    data_block_size: int = 4096
    hash_block_size: int = 4096
    algorithm: str = "sha256"

    @property
    def per_block(self) -> int:
        return self.hash_block_size // DIGEST

    def level_sizes(self) -> list[int]:
        """Hash blocks per level, lowest (over the data) first, as cryptsetup counts them."""
        sizes, n = [], self.data_blocks
        while True:
            n = -(-n // self.per_block)
            sizes.append(n)
            if n == 1:
                return sizes

    @property
    def tree_offset(self) -> int:
        return -(-SUPERBLOCK_SIZE // self.hash_block_size) * self.hash_block_size

    @property
    def hash_size(self) -> int:
        """Bytes the hash partition needs: superblock + tree."""
        return self.tree_offset + sum(self.level_sizes()) * self.hash_block_size


def salt_and_uuid(seed: uuidlib.UUID) -> tuple[bytes, bytes]:
    """Derive salt and superblock UUID from the build seed, as systemd-repart >= 255 does."""
    salt = hmac.new(seed.bytes, b"verity-salt", hashlib.sha256).digest()
    u = bytearray(hmac.new(seed.bytes, b"verity-uuid", hashlib.sha256).digest()[:16])
    u[6] = (u[6] & 0x0F) | 0x40
    u[8] = (u[8] & 0x3F) | 0x80
    return salt, bytes(u)


def superblock(p: Params) -> bytes:
    sb = struct.pack("<8sII16s32sIIQH6x", MAGIC, 1, 1, p.uuid, p.algorithm.encode(),
                     p.data_block_size, p.hash_block_size, p.data_blocks, len(p.salt))
    sb += p.salt.ljust(256, b"\0")
    return sb.ljust(SUPERBLOCK_SIZE, b"\0")


def parse_superblock(raw: bytes, where: str) -> Params:
    if len(raw) < SUPERBLOCK_SIZE or raw[:8] != MAGIC:
        raise BadInput(where, "no dm-verity superblock ('verity' magic missing)")
    _, version, htype, u, alg, dbs, hbs, blocks, salt_size = struct.unpack_from("<8sII16s32sIIQH", raw)
    alg = alg.rstrip(b"\0").decode(errors="replace")
    if version != 1 or htype != 1:
        raise BadInput(where, f"unsupported verity superblock version {version} / hash type {htype}")
    if alg != "sha256":
        raise BadInput(where, f"unsupported verity hash algorithm {alg!r} (only sha256)")
    for name, size in (("data block size", dbs), ("hash block size", hbs)):
        if size < 512 or size > 65536 or size & (size - 1):
            raise BadInput(where, f"invalid verity {name} {size}")
    if salt_size > 256 or blocks == 0:
        raise BadInput(where, f"invalid verity superblock (salt size {salt_size}, {blocks} data blocks)")
    return Params(blocks, raw[88:88 + salt_size], u, dbs, hbs, alg)


def _hash_blocks(salt: bytes, buf: memoryview, size: int) -> bytes:
    """Concatenated sha256(salt || block) for each block of buf."""
    out = bytearray()
    for i in range(0, len(buf), size):
        h = hashlib.sha256(salt)
        h.update(buf[i:i + size])
        out += h.digest()
    return bytes(out)


def _pack(hashes: bytes, p: Params) -> bytes:
    """Pack digests into zero-padded hash blocks."""
    per = p.per_block * DIGEST
    blocks = [hashes[i:i + per].ljust(p.hash_block_size, b"\0") for i in range(0, len(hashes), per)]
    return b"".join(blocks)


def _data_hashes(f: BinaryIO, offset: int, p: Params, pool: ThreadPoolExecutor,
                 progress: Callable[[int], None] | None):
    """Yield level-0 digests chunk by chunk (hashing on two threads: hashlib drops the GIL)."""
    f.seek(offset)
    remaining = p.data_blocks * p.data_block_size
    pending = []
    while remaining or pending:
        while remaining and len(pending) < 4:
            buf = f.read(min(CHUNK, remaining))
            if len(buf) % p.data_block_size or not buf:
                raise BadInput(getattr(f, "name", "data"), "data area is shorter than the verity superblock says")
            remaining -= len(buf)
            pending.append(pool.submit(_hash_blocks, p.salt, memoryview(buf), p.data_block_size))
        digests = pending.pop(0).result()
        if progress:
            progress(len(digests) // DIGEST * p.data_block_size)
        yield digests


def build_tree(data: BinaryIO, data_offset: int, p: Params,
               progress: Callable[[int], None] | None = None) -> tuple[bytes, bytes]:
    """Return (root hash, hash partition image = superblock + tree) for the data area."""
    with ThreadPoolExecutor(2) as pool:
        level = _pack(b"".join(_data_hashes(data, data_offset, p, pool, progress)), p)
    levels = [level]
    while len(level) > p.hash_block_size:
        level = _pack(_hash_blocks(p.salt, memoryview(level), p.hash_block_size), p)
        levels.append(level)
    root = hashlib.sha256(p.salt + levels[-1]).digest()
    image = superblock(p).ljust(p.tree_offset, b"\0") + b"".join(reversed(levels))
    return root, image


@dataclass(frozen=True)
class Mismatch:
    area: str  # "data" or "hash"
    block: int  # block index within that area
    level: int  # tree level whose stored digest disagreed (0 = over the data)

    def __str__(self) -> str:
        unit = "data block" if self.area == "data" else f"hash block (level {self.level})"
        return f"first bad {unit} {self.block}"


def verify(data: BinaryIO, data_offset: int, hashdev: BinaryIO, hash_offset: int, roothash: bytes,
           progress: Callable[[int], None] | None = None, where: str = "disk") -> tuple[Params, Mismatch | None]:
    """Check the data area against the stored tree and the tree against the root hash.

    Streams everything once with bounded memory; returns the first mismatch found, if any.
    The tree is checked top-down before the data, so a bad hash block is reported as such.
    """
    hashdev.seek(hash_offset)
    p = parse_superblock(hashdev.read(SUPERBLOCK_SIZE), where)
    sizes = p.level_sizes()
    starts, pos = {}, hash_offset + p.tree_offset
    for lvl in reversed(range(len(sizes))):
        starts[lvl] = pos
        pos += sizes[lvl] * p.hash_block_size

    def read_level(lvl: int) -> bytes:
        hashdev.seek(starts[lvl])
        raw = hashdev.read(sizes[lvl] * p.hash_block_size)
        if len(raw) != sizes[lvl] * p.hash_block_size:
            raise BadInput(where, "hash area is shorter than the verity superblock says")
        return raw

    # Top block against the root, then each level's blocks against their parents.
    parent = read_level(len(sizes) - 1)
    if hashlib.sha256(p.salt + parent).digest() != roothash:
        return p, Mismatch("hash", _block_index(starts, sizes, p, len(sizes) - 1, 0, hash_offset), len(sizes) - 1)
    for lvl in reversed(range(len(sizes) - 1)):
        child = read_level(lvl)
        got = _hash_blocks(p.salt, memoryview(child), p.hash_block_size)
        bad = _first_diff(got, parent)
        if bad is not None:
            return p, Mismatch("hash", _block_index(starts, sizes, p, lvl, bad, hash_offset), lvl)
        parent = child
        if lvl == 0:
            break
    # Level 0 (in `parent` when there is more than one level) against the data, streamed.
    level0 = parent if len(sizes) > 1 else read_level(0)
    seen = 0
    with ThreadPoolExecutor(2) as pool:
        for digests in _data_hashes(data, data_offset, p, pool, progress):
            n = len(digests) // DIGEST
            stored = level0[seen * DIGEST:(seen + n) * DIGEST]  # entries are contiguous: 32 divides the block
            bad = _first_diff(digests, stored)
            if bad is not None:
                return p, Mismatch("data", seen + bad, 0)
            seen += n
    return p, None


def _first_diff(a: bytes, b: bytes) -> int | None:
    if a == b[:len(a)]:
        return None
    for i in range(0, len(a), DIGEST):
        if a[i:i + DIGEST] != b[i:i + DIGEST]:
            return i // DIGEST
    return None


def _block_index(starts, sizes, p: Params, lvl: int, idx: int, hash_offset: int) -> int:
    """Index of a hash block counted from the start of the hash partition (superblock = 0)."""
    return (starts[lvl] - hash_offset) // p.hash_block_size + idx
