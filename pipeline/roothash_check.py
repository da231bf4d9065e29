"""`verify-disk`: check a disk's dm-verity partitions against a root hash, in pure Python (building
such a disk: verity_build.py)."""

from __future__ import annotations

import re
from pathlib import Path

from . import log
from .errors import BadInput
from .measure import gpt, verity


def verify_disk(disk: Path, roothash: str, data_label: str = "app", hash_label: str = "app-verity") -> dict:
    if not re.fullmatch(r"[0-9a-fA-F]{64}", roothash):
        raise BadInput("--roothash", f"{roothash!r} is not 64 hex digits")
    table = gpt.read_table(disk)
    data = table.by_label(data_label, str(disk))
    hashp = table.by_label(hash_label, str(disk))
    with open(disk, "rb") as d, open(disk, "rb") as h:
        bar = log.progress(data.size, f"verify {disk.name}")
        params, bad = verity.verify(d, data.offset, h, hashp.offset, bytes.fromhex(roothash), bar.update,
                                    where=f"{disk} ({hash_label})")
        bar.close()
    if params.data_blocks * params.data_block_size > data.size:
        raise BadInput(str(disk), f"verity superblock covers {params.data_blocks} blocks, more than partition "
                                  f"{data_label!r} holds")
    return {"disk": str(disk), "ok": bad is None, "first_bad": str(bad) if bad else None,
            "data_blocks": params.data_blocks, "roothash": roothash.lower()}
