"""What differs inside two builds' OS disks and UKIs, for `compare` and `audit` (audit.py):
partition by partition, the squashfs root and the ESP file by file, the UKI section by section.
"""

from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path

from .errors import BadInput
from .files import tree_digests
from .files import sha256_file
from .measure import fat, gpt, pe
from .run import run


def diff_ukis(a: Path, b: Path) -> list[str]:
    """Names of the PE sections that differ between two UKIs (empty when byte-identical)."""
    if sha256_file(a) == sha256_file(b):
        return []
    ua, ub = pe.PeImage(a.read_bytes(), str(a)), pe.PeImage(b.read_bytes(), str(b))

    def digest(uki: pe.PeImage, name: str) -> bytes | None:
        return uki.section_sha256(name) if uki.section(name) else None

    names = sorted({s.name for s in ua.sections} | {s.name for s in ub.sections})
    out = [f"{a.name}: section {n} differs" for n in names if digest(ua, n) != digest(ub, n)]
    return out or [f"{a.name}: headers differ (sections are identical)"]


def diff_disks(a: Path, b: Path, scratch: Path | None = None) -> list[str]:
    """What differs between two OS disks: partition table, then partition by partition, and
    inside the squashfs root and the ESP file by file. Empty when byte-identical."""
    if sha256_file(a) == sha256_file(b):
        return []
    ta, tb = gpt.read_table(a), gpt.read_table(b)
    out = []
    if ta.disk_uuid != tb.disk_uuid:
        out.append(f"disk UUID {ta.disk_uuid} != {tb.disk_uuid}")
    pa, pb = {p.label: p for p in ta.partitions}, {p.label: p for p in tb.partitions}
    for label in sorted(set(pa) | set(pb)):
        x, y = pa.get(label), pb.get(label)
        if x is None or y is None:
            out.append(f"partition {label}: only in {'b' if x is None else 'a'}")
            continue
        if (x.uuid, x.size, x.type_uuid) != (y.uuid, y.size, y.type_uuid):
            out.append(f"partition {label}: uuid/size/type {x.uuid}/{x.size} != {y.uuid}/{y.size}")
        if gpt.partition_sha256(a, x) == gpt.partition_sha256(b, y):
            continue
        out.append(f"partition {label}: contents differ")
        if label == "root":
            with tempfile.TemporaryDirectory(dir=scratch) as tmp:
                out += [f"  root:{line}" for line in _diff_trees(*(
                    _unsquash(d, p, Path(tmp) / n) for d, p, n in ((a, x, "a"), (b, y, "b"))))]
        elif label == "esp":
            try:
                out += [f"  ESP:{line}" for line in _diff_trees(_esp_files(a, x), _esp_files(b, y))]
            except BadInput as e:
                out.append(f"  ESP: not readable as FAT: {e}")
    if not out:
        out.append("disks differ outside the partitions (GPT headers or padding)")
    return out


def _unsquash(disk: Path, p: gpt.Partition, dest: Path) -> dict[str, str]:
    listing = run(["unsquashfs", "-o", str(p.offset), "-lln", disk]).text.splitlines()
    run(["unsquashfs", "-o", str(p.offset), "-no-progress", "-d", dest, disk])
    digests = tree_digests(dest, ".")
    # the listing carries modes, owners and mtimes, which file digests do not
    for line in listing:
        parts = line.split(None, 5)
        if len(parts) == 6 and parts[5].startswith("squashfs-root"):
            if parts[0].startswith("d"):  # a directory's size follows from its entries' layout
                parts[2] = "-"
            digests["meta:" + parts[5].split(" -> ")[0]] = " ".join(parts[:5])
    return digests


def _esp_files(disk: Path, p: gpt.Partition) -> dict[str, str]:
    """{path: sha256} of the ESP's files, and of its boot sector and each directory's entry table
    (names, attributes, timestamps, sizes), which file digests do not cover."""
    def sha(data: bytes) -> str:
        return hashlib.sha256(data).hexdigest()

    with fat.FatFs(disk, p.offset, p.size, f"{disk} (ESP)") as esp:
        out = {"boot sector": sha(esp.boot_sector)}
        out.update({f"entries of {path}": sha(esp.directory_bytes(c)) for path, c in esp.directories().items()})
        out.update({path.lstrip("/"): sha(esp.read(path)) for path in esp.walk()})
    return out


def _diff_trees(x: dict[str, str], y: dict[str, str]) -> list[str]:
    lines = []
    for k in sorted(set(x) | set(y)):
        if x.get(k) != y.get(k):
            lines.append(f" {k}: " + ("only in b" if k not in x else "only in a" if k not in y else "differs"))
    return lines[:200] or [" (no file-level difference found)"]
