#!/usr/bin/env python3
"""Image build times (`mithril-build image NAME`), cold and warm:

cold: an empty cache, so every pinned .deb is fetched from the Debian archive first;
warm: the .debs are in the input store (each is still re-hashed against its pin).
Both runs must give the same bytes. Wall time of the whole command (Python start included).

Usage: python3 bench/bench_images.py [--runs 3]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from pipeline.images import RECIPES  # noqa: E402


def timed(argv) -> float:
    start = time.perf_counter()
    res = subprocess.run(argv, check=False, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if res.returncode:
        raise SystemExit(f"{argv} failed:\n{res.stderr[-2000:]}")
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-images-"))
    try:
        project = work / "p"
        subprocess.run([sys.executable, "-m", "pipeline", "init", project], check=True, stdout=subprocess.DEVNULL)
        result = {}
        for name in RECIPES:
            def build(cache: Path, out: Path) -> float:
                return timed([sys.executable, "-m", "pipeline", "image", name, "-o", out, "--project", project,
                              "--cache-dir", cache, "--locked"])
            cold, warm, digests = [], [], set()
            for i in range(args.runs):
                cache = work / f"cache-{name}-{i}"
                cold.append(build(cache, work / f"{name}-cold{i}.tar"))
                warm.append(build(cache, work / f"{name}-warm{i}.tar"))
                for kind in ("cold", "warm"):
                    digests.add(hashlib.sha256((work / f"{name}-{kind}{i}.tar").read_bytes()).hexdigest())
                shutil.rmtree(cache)
            size = (work / f"{name}-warm0.tar").stat().st_size
            assert len(digests) == 1, f"{name}: builds differ"
            print(f"{name}: cold {min(cold):.2f}-{max(cold):.2f} s, warm {min(warm):.2f}-{max(warm):.2f} s "
                  f"({args.runs} runs each), {size / 2**20:.1f} MiB, identical bytes")
            result[name] = {"cold_s": [round(t, 2) for t in cold], "warm_s": [round(t, 2) for t in warm],
                            "bytes": size}
        print(json.dumps(result))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
