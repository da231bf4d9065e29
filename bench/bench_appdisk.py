#!/usr/bin/env python3
"""App-disk benchmarks (issue 2), each against its reference measured in the same run:

1. no-op `mithril-build appdisk` on a warm cache (wall time);
2. `mithril-build verify-disk` vs `veritysetup verify` on the same 2 GiB disk (throughput, peak RSS);
3. app-disk build vs `systemd-repart` alone (Format=squashfs + Verity) on the same staged tree.

Usage: python3 bench/bench_appdisk.py [--size-mib 2048]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from pipeline.measure import gpt, verity

SEED = uuid.UUID("5c8a2e4f-6d1b-4a7e-9b3c-2f0e1d4c5b6a")


def timed(argv, **kw) -> tuple[float, int]:
    """Wall seconds and the child's peak RSS (KiB) of one command."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    start = time.perf_counter()
    res = subprocess.run(argv, check=False, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, **kw)
    if res.returncode:
        raise SystemExit(f"{argv[0]} failed:\n{res.stderr[-2000:]}")
    wall = time.perf_counter() - start
    return wall, max(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, before)


def rss_of(argv) -> int:
    out = subprocess.run(["/usr/bin/time", "-f", "%M", *argv], capture_output=True, text=True, check=True)
    return int(out.stderr.strip().splitlines()[-1])


def mb(*args):
    return [sys.executable, "-m", "pipeline", *map(str, args)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mib", type=int, default=2048)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-appdisk-"))
    try:
        project = work / "p"
        subprocess.run(mb("init", project), check=True, stdout=subprocess.DEVNULL)
        subprocess.run(mb("appdisk", "--project", project, "--unlocked"), check=True, stderr=subprocess.DEVNULL)
        noop = min(timed(mb("appdisk", "--project", project, "--unlocked"))[0] for _ in range(5))
        print(f"no-op appdisk (warm cache): {noop:.3f} s (best of 5)")

        # 2. verify-disk vs veritysetup verify on a 2 GiB disk.
        size = args.size_mib << 20
        data, hashf = work / "data.img", work / "hash.img"
        with open(data, "wb") as f:
            f.writelines(os.urandom(1 << 24) for _ in range(size >> 24))
        salt, u = verity.salt_and_uuid(SEED)
        params = verity.Params(size // 4096, salt, u)
        with open(data, "rb") as f:
            root, image = verity.build_tree(f, 0, params)
        hashf.write_bytes(image)
        defs = work / "defs"
        defs.mkdir()
        (defs / "10-app.conf").write_text(f"[Partition]\nType=linux-generic\nLabel=app\nCopyBlocks={data}\n")
        (defs / "20-hash.conf").write_text(f"[Partition]\nType=linux-generic\nLabel=app-verity\nCopyBlocks={hashf}\n")
        disk = work / "disk.raw"
        subprocess.run(["systemd-repart", "--offline=yes", f"--seed={SEED}", "--empty=create", "--size=auto",
                        "--dry-run=no", f"--definitions={defs}", disk], check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
        table = gpt.read_table(disk)
        assert table.by_label("app", "disk").size == size
        ours, theirs = [], []
        for _ in range(3):
            ours.append(timed(mb("verify-disk", disk, "--roothash", root.hex()))[0])
            theirs.append(timed(["veritysetup", "verify", data, hashf, root.hex()])[0])
        ours_rss = rss_of(mb("verify-disk", disk, "--roothash", root.hex()))
        theirs_rss = rss_of(["veritysetup", "verify", data, hashf, root.hex()])
        gib = size / (1 << 30)
        print(f"verify-disk {args.size_mib} MiB: ours {min(ours):.2f} s ({gib / min(ours):.2f} GiB/s, "
              f"peak RSS {ours_rss / 1024:.0f} MB); veritysetup verify {min(theirs):.2f} s "
              f"({gib / min(theirs):.2f} GiB/s, peak RSS {theirs_rss / 1024:.0f} MB); "
              f"throughput ratio ours/veritysetup = {min(theirs) / min(ours):.2f}x")

        # 3. our whole stage vs systemd-repart alone on the same staged tree.
        for f in (data, hashf, disk):
            f.unlink()
        big = project / "appdisk/www/big.bin"
        big.write_bytes(os.urandom(256 << 20))
        ours_build = min(timed(mb("appdisk", "--project", project, "--unlocked", "--force"))[0] for _ in range(3))
        staged = work / "tree"
        subprocess.run([sys.executable, "-c", f"""
import sys; sys.path.insert(0, {str(Path(__file__).resolve().parent.parent)!r})
from pathlib import Path
from pipeline import project as p
from pipeline.stages.appdisk import stage_tree
ctx = p.context(Path({str(project)!r}), None, None, None, False)
stage_tree(ctx, Path({str(staged)!r}), None)
"""], check=True)
        (defs / "10-app.conf").write_text("[Partition]\nType=linux-generic\nLabel=app\nFormat=squashfs\n"
                                          "CopyFiles=/:/\nVerity=data\nVerityMatchKey=app\nMinimize=best\n")
        (defs / "20-hash.conf").write_text("[Partition]\nType=linux-generic\nLabel=app-verity\nVerity=hash\n"
                                           "VerityMatchKey=app\nMinimize=best\n")
        repart = []
        for _ in range(3):
            disk.unlink(missing_ok=True)
            repart.append(timed(["systemd-repart", "--offline=yes", f"--seed={SEED}", "--empty=create",
                                 "--size=auto", "--dry-run=no", f"--definitions={defs}", f"--root={staged}", disk],
                                env={**os.environ, "SOURCE_DATE_EPOCH": "1704067200"})[0])
        print(f"app-disk build (256 MiB tree): mithril-build appdisk {ours_build:.2f} s; systemd-repart alone "
              f"{min(repart):.2f} s; ratio {ours_build / min(repart):.2f}x")
        print(json.dumps({"noop_s": round(noop, 3), "verify_ours_s": round(min(ours), 2),
                          "verify_veritysetup_s": round(min(theirs), 2), "verify_rss_mb": round(ours_rss / 1024),
                          "build_ours_s": round(ours_build, 2), "build_repart_s": round(min(repart), 2)}))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
