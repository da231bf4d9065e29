#!/usr/bin/env python3
"""Time to produce measurements.json from a ~600 MB OS disk image: pipeline.measure (no root)
against the seed approach (loop-mount the ESP, `pesign --hash` on the UKI, `objcopy` out the
sections, pesign on the kernel, sha256 of the sections), both timed in the same run.

If loop devices or mount are not available, the seed's extraction falls back to mtools
(`mcopy -i disk@@offset`), and the output says so.

    python3 bench/bench_measurements.py [--runs 3] [--keep DIR]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.errors import ToolFailed
from pipeline.measure import gpt, pcr11, predict
from pipeline.platforms import firmware
from pipeline.measure.pcr import Simulator
from pipeline.project import REPO
from pipeline.run import SYSTEM_PATH, run
from tests import ukifixture as U

ENV = {"PATH": SYSTEM_PATH, "MTOOLS_SKIP_CHECK": "1"}
ROOTHASH = "5b1f9a2c" * 8


def make_image(work: Path) -> Path:
    """UKI ~69 MB (cloud kernel + a 55 MB initrd, like the mkosi image) on a FAT32 ESP, plus a
    root partition of fixed bytes up to ~600 MB."""
    p = U.parts(work)
    big = work / "initrd-big"
    big.write_bytes(hashlib.shake_256(b"initrd").digest(55 << 20))
    p = U.Parts(p.kernel, p.stub252, p.stub254, big, p.osrel, work)
    uki = U.build_uki(p, work / "uki.efi", p.stub252).read_bytes()
    esp_mb = (len(uki) * 11 // 10 >> 20) + 8
    esp = U.make_fat(work / "esp.fat", {"/EFI/BOOT/BOOTX64.EFI": uki}, fat=32, size_mb=esp_mb)
    disk = U.make_disk(work / "os_disk.raw", esp, root_mb=600 - esp_mb - 2)
    esp.unlink()
    return disk


def ours(disk: Path, digests: dict | None) -> dict:
    """As the stage runs it when `digests` (from the OS stage's cache record) are given: the
    separate uki.efi is compared byte for byte instead of hashed again."""
    plat = firmware.load(REPO, "qemu")
    uki_copy = disk.parent / "uki.efi" if digests else None
    return predict.predict(disk, ROOTHASH, plat, "production", digests=digests, uki_copy=uki_copy).measurements


def pesign_hash(path: Path) -> bytes:
    return bytes.fromhex(run(["pesign", "--hash", "-i", path], extra_env=ENV).text.split("hash:")[1].strip())


def seed(disk: Path, work: Path, use_loop: bool) -> dict:
    """The seed flow: mount (or mcopy) the ESP, pesign --hash, objcopy the sections."""
    esp = gpt.read_table(disk).by_type(gpt.ESP_TYPE)[0]
    uki = work / "seed-uki.efi"
    if use_loop:
        mnt = work / "mnt"
        mnt.mkdir(exist_ok=True)
        loop = run(["losetup", "--find", "--show", "--read-only", f"--offset={esp.offset}",
                    f"--sizelimit={esp.size}", disk], extra_env=ENV).text.strip()
        try:
            run(["mount", "-o", "ro", loop, mnt], extra_env=ENV)
            try:
                run(["cp", mnt / "EFI/BOOT/BOOTX64.EFI", uki], extra_env=ENV)
            finally:
                run(["umount", mnt], extra_env=ENV)
        finally:
            run(["losetup", "-d", loop], extra_env=ENV)
    else:
        run(["mcopy", "-o", "-n", "-i", f"{disk}@@{esp.offset}", "::/EFI/BOOT/BOOTX64.EFI", uki], extra_env=ENV)
    values = {"uki": pesign_hash(uki)}
    sim = Simulator()
    for name in pcr11.measured_sections(252):
        out = work / f"seed{name}"
        run(["objcopy", "-O", "binary", f"--only-section={name}", uki, out], extra_env=ENV)
        data = out.read_bytes() if out.exists() else b""
        if data:
            sim.measure(11, name.encode() + b"\0", "seed", name)
            sim.measure(11, data, "seed", name)
        if name == ".linux":
            values["kernel"] = pesign_hash(out)
        out.unlink(missing_ok=True)
    values["11"] = sim.value(11)
    return {k: v.hex() for k, v in values.items()}


def can_loop(disk: Path, work: Path) -> tuple[bool, str]:
    if os.geteuid() != 0:
        return False, "not root"
    try:
        seed(disk, work, True)
        return True, "loop mount"
    except ToolFailed as e:
        line = next((ln for ln in str(e).splitlines() if "mount" in ln), str(e).splitlines()[0])
        return False, f"loop mount failed here ({line.strip()[:90]}); mtools used instead"


def timed(fn, runs: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(runs):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-measure-") as tmp:
        work = Path(tmp)
        disk = make_image(work)
        size = disk.stat().st_size
        use_loop, how = can_loop(disk, work)
        t_full, m_full = timed(lambda: ours(disk, None), args.runs)
        known = {k: m_full["inputs"][k] for k in ("os_disk.raw", "uki.efi")}
        t_stage, m = timed(lambda: ours(disk, known), args.runs)
        t_seed, s = timed(lambda: seed(disk, work, use_loop), args.runs)
        agree = (s["uki"] == m["uki"]["authenticode"] and s["kernel"] == m["uki"]["kernel_authenticode"]
                 and s["11"] == m["pcrs"]["11"]["expected"][0])
        print(f"image: {size / 1e6:.0f} MB, UKI on a FAT32 ESP; median of {args.runs} runs; seed extraction: {how}")
        print(f"mithril measure (as the stage: disk/UKI digests from the cache record): {t_stage:.3f} s")
        print(f"mithril measure incl. sha256 of the whole disk and the UKI:            {t_full:.3f} s")
        print(f"seed (ESP copy + pesign --hash x2 + objcopy, PCR 4 inputs and 11 only): {t_seed:.3f} s")
        print(f"ratio seed / mithril: {t_seed / t_stage:.1f}x (stage), {t_seed / t_full:.1f}x (incl. disk sha256)")
        print(f"results agree (UKI + kernel Authenticode, PCR 11): {agree}")
        if not agree:
            sys.exit(1)


if __name__ == "__main__":
    main()
