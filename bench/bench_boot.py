#!/usr/bin/env python3
"""Boot-check wall time: QEMU + OVMF + swtpm boot of a built profile until the guest's PCR print,
then power-off and cleanup. TCG always; KVM when /dev/kvm is usable (a failed KVM start is
reported with the time it took to detect it).

    python3 bench/bench_boot.py [--out out/demo] [--runs 1] [--timeout 1200]

Prints one line per run; copy the figures into bench/RESULTS.md with the machine's load.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.platforms.qemu import boot
from pipeline.errors import ToolFailed


def one(out: Path, accel: str, timeout: float) -> tuple[float, float | None, str]:
    """(wall seconds incl. swtpm start and cleanup, seconds from QEMU start to the PCR print, note)."""
    app = out / "application_disk.raw"
    with tempfile.TemporaryDirectory() as tmp:
        start = time.monotonic()
        try:
            report, used, _fallback, to_print = boot.boot_disks(
                out / "os_disk.raw", app if app.exists() else None, timeout, Path(tmp) / "serial.log", accel)
        except ToolFailed as e:
            return time.monotonic() - start, None, f"failed: {str(e).splitlines()[0]}"
        return time.monotonic() - start, to_print, f"{used}, setup {report.setup}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("out/demo"), help="folder with os_disk.raw (+ application_disk.raw)")
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--timeout", type=float, default=1200)
    args = ap.parse_args()
    accels = ["tcg"] + (["kvm"] if boot.kvm_usable() else [])
    print(f"host: {os.cpu_count()} cpus, load average {os.getloadavg()[0]:.2f} at start; "
          f"disks from {args.out}")
    for accel in accels:
        walls = []
        for i in range(args.runs):
            wall, to_print, note = one(args.out, accel, args.timeout)
            shown = f"{to_print:.1f} s to PCR print" if to_print is not None else "no PCR print"
            print(f"{accel} run {i + 1}: {wall:.1f} s wall, {shown} ({note}); "
                  f"load {os.getloadavg()[0]:.2f}", flush=True)
            if to_print is not None:
                walls.append(wall)
        if walls:
            print(f"{accel}: median wall {statistics.median(walls):.1f} s over {len(walls)} run(s)")


if __name__ == "__main__":
    main()
