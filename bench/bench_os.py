#!/usr/bin/env python3
"""Benchmark the OS stage against mkosi alone, measured in the same run.

    python3 bench/bench_os.py [--project DIR] [--skip-cold]

1. cold: `mithril-build os --force` with an empty input store (the pinned .debs downloaded);
2. warm: the same with the input store filled;
3. reference: mkosi 24.3 run directly on the same rendered config and the same local repository
   of the pinned .debs, switched to Format=disk with a mkosi.repart ESP + squashfs root + verity
   (what mkosi alone would do; not reproducible: systemd-repart 254 draws a random verity salt);
4. mkosi's share: mkosi on the rendered config as the stage runs it (Format=directory).
Prints times, ratios (stage / reference) and the image and UKI sizes.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline import project
from pipeline.run import run
from pipeline.stages import os_image

REPART = {
    "00-esp.conf": "[Partition]\nType=esp\nFormat=vfat\nCopyFiles=/efi:/\nSizeMinBytes=100M\nSizeMaxBytes=100M\n",
    "10-root.conf": "[Partition]\nType=root\nFormat=squashfs\nCopyFiles=/\nExcludeFiles=/efi/\nVerity=data\n"
                    "VerityMatchKey=root\nMinimize=best\n",
    "20-root-verity.conf": "[Partition]\nType=root-verity\nVerity=hash\nVerityMatchKey=root\nMinimize=best\n",
}


def timed(fn) -> float:
    start = time.monotonic()
    fn()
    return time.monotonic() - start


def stage(root: Path, cache: Path) -> None:
    run([sys.executable, "-m", "pipeline", "os", "--project", root, "--cache-dir", cache, "--force", "--unlocked"],
        timeout=7200)


def mkosi_direct(ctx, work: Path, disk: bool) -> None:
    cfg = work / "config"
    shutil.rmtree(work, ignore_errors=True)
    os_image.render_config(ctx, cfg)
    pins = os_image.os_pins(ctx)
    mirror = os_image.local_repo(ctx, pins, work / "repo") if pins else None
    package_cache = work / "packages"
    package_cache.mkdir()
    if disk:
        conf = cfg / "mkosi.conf"
        conf.write_text(conf.read_text().replace("Format=directory", "Format=disk"))
        (cfg / "mkosi.repart").mkdir()
        for name, text in REPART.items():
            (cfg / "mkosi.repart" / name).write_text(text)
    (work / "ws").mkdir()
    run(os_image.mkosi_argv(cfg, work / "out", work / "ws", package_cache, mirror), extra_env=os_image.tool_env(ctx),
        timeout=7200)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--project", type=Path, default=Path(__file__).resolve().parent.parent)
    ap.add_argument("--skip-cold", action="store_true", help="skip the cold build (no downloads)")
    args = ap.parse_args()
    root = args.project.resolve()
    with tempfile.TemporaryDirectory(prefix="bench-os-", dir="/var/tmp") as tmp:
        tmp = Path(tmp)
        cache = tmp / "cache"
        ctx = project.context(root, None, None, cache, False)
        figures = {}
        if not args.skip_cold:
            figures["cold stage (empty input store)"] = timed(lambda: stage(root, cache))
        else:
            stage(root, cache)  # fills the input store
        figures["warm stage (mithril-build os --force)"] = timed(lambda: stage(root, cache))
        figures["mkosi alone, Format=disk + repart verity"] = timed(lambda: mkosi_direct(ctx, tmp / "ref", True))
        figures["mkosi alone, Format=directory (the stage's mkosi step)"] = timed(
            lambda: mkosi_direct(ctx, tmp / "dir", False))
        out = root / "out" / ctx.profile_name
        ref_img = tmp / "ref" / "out" / "image.raw"
        sizes = {
            "os_disk.raw (apparent)": (out / "os_disk.raw").stat().st_size,
            "os_disk.raw (allocated)": (out / "os_disk.raw").stat().st_blocks * 512,
            "uki.efi": (out / "uki.efi").stat().st_size,
            "mkosi image.raw (apparent)": ref_img.stat().st_size if ref_img.exists() else 0,
        }
    warm = figures["warm stage (mithril-build os --force)"]
    ref = figures["mkosi alone, Format=disk + repart verity"]
    mk = figures["mkosi alone, Format=directory (the stage's mkosi step)"]
    print(f"## OS image (bench/bench_os.py, {os.cpu_count()} cores)\n")
    print("| what | seconds |\n|---|---|")
    for k, v in figures.items():
        print(f"| {k} | {v:.1f} |")
    print(f"\nwarm stage / mkosi alone (disk): {warm / ref:.3f} (overhead {100 * (warm / ref - 1):+.1f} %)")
    print(f"warm stage / its own mkosi step: {warm / mk:.3f} (squashfs + verity + ukify + repart + digests)")
    print("\n| output | bytes |\n|---|---|")
    for k, v in sizes.items():
        print(f"| {k} | {v:,} |")


if __name__ == "__main__":
    main()
