"""The dm-verity disk recipe of both disks (the OS root, the application disk), byte-for-byte
reproducible: a squashfs zero-padded to whole blocks, its hash tree (`measure/verity.py`, salt
and superblock UUID derived from the seed), systemd-repart assembling the GPT disk from those
blocks (CopyBlocks=) with the roothash halves as partition UUIDs, and a check of the result.

systemd-repart 254 would draw a random verity salt, so it only copies blocks made here. What
differs between the disks is the caller's: mksquashfs options, the repart.d templates of its
checkout folder and their values, the tools' environment.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from . import log, templates
from .errors import BadInput, VerificationFailed
from .files import sha256_file
from .measure import gpt, verity
from .run import run

BLOCK = 4096  # data and hash block size


@dataclass(frozen=True)
class VerityImages:
    data: Path  # the squashfs, whole blocks
    hash: Path  # superblock + hash tree
    params: verity.Params
    roothash: bytes

    @property
    def uuids(self) -> tuple[uuid.UUID, uuid.UUID]:
        """Data and hash partition UUIDs: the roothash halves (data = first 128 bits), as systemd does."""
        return uuid.UUID(bytes=self.roothash[:16]), uuid.UUID(bytes=self.roothash[16:32])


def squashfs(tree: Path, image: Path, options: Sequence[str], env: Mapping[str, str]) -> Path:
    """mksquashfs of tree (reproducible with SOURCE_DATE_EPOCH in env), zero-padded to whole blocks."""
    # zstd level 3: ~10x faster than level 15 here for ~8 % more bytes (bench/RESULTS.md)
    run(["mksquashfs", tree, image, "-noappend", *options, "-comp", "zstd", "-Xcompression-level", "3",
         "-processors", str(os.cpu_count() or 1), "-no-progress", "-quiet"], extra_env=env)
    os.truncate(image, -(-image.stat().st_size // BLOCK) * BLOCK)
    return image


def hash_tree(data: Path, dest: Path, seed: uuid.UUID) -> VerityImages:
    """Write the dm-verity hash image of data (salt and superblock UUID from the seed) to dest."""
    salt, vuuid = verity.salt_and_uuid(seed)
    size = data.stat().st_size
    params = verity.Params(size // BLOCK, salt, vuuid, BLOCK, BLOCK)
    bar = log.progress(size, "verity tree")
    with open(data, "rb") as f:
        root, image = verity.build_tree(f, 0, params, progress=bar.update)
    bar.close()
    dest.write_bytes(image)
    return VerityImages(data, dest, params, root)


def assemble(disk: Path, source: Path, values: dict, defs: Path, seed: uuid.UUID, env: Mapping[str, str],
             options: Sequence[str] = ()) -> None:
    """systemd-repart creates disk from the definitions in source/repart.d (of the checkout):
    `*.conf` as they are, `*.conf.j2` rendered with values; defs is where they go."""
    folder = source / "repart.d"
    jinja = templates.environment(folder, source.name)
    defs.mkdir()
    for path in sorted(folder.glob("*.conf*")):
        if path.name.endswith(".conf.j2"):
            text = templates.render(jinja, path.name, values, f"{source.name}/repart.d/{path.name}")
            (defs / path.name.removesuffix(".j2")).write_bytes(text.encode())
        elif path.name.endswith(".conf"):
            (defs / path.name).write_bytes(path.read_bytes())
    run(["systemd-repart", "--offline=yes", "--empty=create", "--size=auto", "--dry-run=no", f"--seed={seed}",
         f"--definitions={defs}", "--no-pager", *options, disk], extra_env=env)


def check(disk: Path, images: VerityImages, labels: tuple[str, str], source: str) -> gpt.Table:
    """The assembled disk's data and hash partitions (labels) carry the roothash halves as UUIDs
    and hold exactly the data and hash images; return its partition table. `source` names the
    checkout folder whose repart.d made the disk (for errors)."""
    table = gpt.read_table(disk)
    by_label = {p.label: p for p in table.partitions}
    want = {label: str(u) for label, u in zip(labels, images.uuids)}
    if any(label not in by_label or str(by_label[label].uuid) != u for label, u in want.items()):
        got = {p.label: str(p.uuid) for p in table.partitions}
        raise BadInput(f"{source}/repart.d", f"the assembled disk's partitions {got} are not {want}",
                       f"keep the labels {' / '.join(labels)} and the UUID= lines")
    for label, image in zip(labels, (images.data, images.hash)):
        p, size = by_label[label], image.stat().st_size
        if size > p.size or gpt.partition_sha256(disk, p, size) != sha256_file(image):
            raise VerificationFailed(f"{disk.name}: partition {label!r} does not hold the expected blocks")
    return table
