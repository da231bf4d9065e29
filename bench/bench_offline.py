#!/usr/bin/env python3
"""An offline rebuild (`all --inputs DIR` inside `unshare -n`) against the online locked build, in
the same run, both from an empty cache: the online build fetches every pinned .deb from the
Debian archive, the offline one copies them from the export folder.

    python3 bench/bench_offline.py [--keep DIR]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SEED = "5c8a2e4f-6d1b-4a7e-9b3c-2f0e1d4c5b6a"


def timed(*argv, cwd: Path) -> float:
    start = time.monotonic()
    subprocess.run([str(a) for a in argv], cwd=cwd, check=True, capture_output=True)
    return time.monotonic() - start


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--keep", type=Path)
    args = ap.parse_args()
    work = args.keep or Path(tempfile.mkdtemp(prefix="bench-offline-"))
    py = [sys.executable, "-m", "pipeline"]
    subprocess.run([*py, "init", work / "online", "--seed", SEED], check=True, capture_output=True)
    shutil.copytree(work / "online", work / "offline", ignore=shutil.ignore_patterns("out", ".mithril"))
    online = timed(*py, "all", "--locked", "--cache-dir", work / "online-cache", cwd=work / "online")
    t = time.monotonic()
    subprocess.run([*py, "export-inputs", work / "inputs", "--cache-dir", work / "online-cache"], cwd=work / "online",
                   check=True, capture_output=True)
    export = time.monotonic() - t
    offline = timed("unshare", "-n", *py, "all", "--locked", "--inputs", work / "inputs", "--cache-dir",
                 work / "offline-cache", cwd=work / "offline")
    same = subprocess.run([*py, "compare", work / "online/out/demo", work / "offline/out/demo"], capture_output=True,
                          text=True)
    print(f"online locked build, empty cache     {online:6.1f} s")
    print(f"export-inputs                         {export:6.1f} s")
    print(f"offline build (unshare -n, --inputs)  {offline:6.1f} s   ratio {offline / online:.2f}x")
    print("outputs:", "ALL MATCH" if same.returncode == 0 else "DIFFER")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
