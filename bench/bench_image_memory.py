#!/usr/bin/env python3
"""Peak memory (and time) of reading and unpacking an image archive with a large layer, against
reference tools in the same run.

Two archives (docker-archive, as `docker save` writes it), each of one gzip layer:
  big:   one file of --size MiB of zeros (768 MiB: a 0.8 MiB archive);
  many:  --files empty files (tar headers only: the member count grows, not the bytes).
Measured per command: peak RSS of the largest process of the command (wait4's ru_maxrss, which
covers the processes it waited for) and wall time:
  `mithril-build init --image A` (checks every layer: digests, members),
  unpack (pipeline.oci_read.unpack, what the app disk does for the no-k3s runtime),
  `skopeo copy docker-archive:A oci:D` (reads and digests the layers),
  `tar -xOf A LAYER | tar -xzf - -C D` (GNU tar unpacking the layer).

Usage: python3 bench/bench_image_memory.py [--size 768] [--files 200000] [--runs 3]
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zlib
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SEED = "5c8a2e4f-6d1b-4a7e-9b3c-2f0e1d4c5b6a"


def gzip_layer(pieces) -> tuple[bytes, str]:
    """(gzip stream, diff_id) of the concatenated byte pieces, made as a stream."""
    z, h, out = zlib.compressobj(6, zlib.DEFLATED, 31), hashlib.sha256(), []
    for piece in pieces:
        h.update(piece)
        out.append(z.compress(piece))
    out.append(z.flush())
    return b"".join(out), "sha256:" + h.hexdigest()


def big_file(size: int):
    info = tarfile.TarInfo("big")
    info.size = size
    yield info.tobuf(tarfile.PAX_FORMAT)
    block = bytes(1 << 20)
    for _ in range(size >> 20):
        yield block
    yield bytes(size & ((1 << 20) - 1)) + bytes(-size % 512 + 1024)


def many_files(count: int):
    yield _dir("d")
    for i in range(count):
        info = tarfile.TarInfo(f"d/{i:07d}")
        yield info.tobuf(tarfile.USTAR_FORMAT)
    yield bytes(1024)


def _dir(name: str) -> bytes:
    info = tarfile.TarInfo(name)
    info.type, info.mode = tarfile.DIRTYPE, 0o755
    return info.tobuf(tarfile.USTAR_FORMAT)


def archive(path: Path, layer: bytes, diff_id: str) -> Path:
    config = json.dumps({"architecture": "amd64", "os": "linux",
                         "config": {"Entrypoint": ["/big"], "ExposedPorts": {"80/tcp": {}}},
                         "rootfs": {"type": "layers", "diff_ids": [diff_id]}}).encode()
    cfg = hashlib.sha256(config).hexdigest() + ".json"
    manifest = json.dumps([{"Config": cfg, "RepoTags": ["localhost/big:1"], "Layers": ["0/layer.tar"]}]).encode()
    with tarfile.open(path, "w") as tf:
        for name, data in [(cfg, config), ("manifest.json", manifest), ("0/layer.tar", layer)]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


def measure(argv, cleanup: Path | None = None) -> tuple[float, float]:
    """(wall seconds, peak RSS MiB of the largest process the command waited for)."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    start = time.perf_counter()
    proc = subprocess.Popen([str(a) for a in argv], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    err = proc.stderr.read().decode(errors="replace")
    proc.stderr.close()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise SystemExit(f"{argv} failed ({proc.returncode}):\n{err[-2000:]}")
    if cleanup is not None:
        shutil.rmtree(cleanup, ignore_errors=True)
    return wall, usage.ru_maxrss / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=768, help="MiB of the big layer's file")
    ap.add_argument("--files", type=int, default=200_000, help="empty files in the many-files layer")
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-image-memory-"))
    unpack = ("import sys; from pathlib import Path; from pipeline.oci_read import unpack; "
              "unpack(Path(sys.argv[1]), Path(sys.argv[2]))")
    try:
        cases = {"big": gzip_layer(big_file(args.size << 20)), "many": gzip_layer(many_files(args.files))}
        result = {}
        for case, (layer, diff_id) in cases.items():
            arc = archive(work / f"{case}.tar", layer, diff_id)
            commands = {
                "init --image": ([sys.executable, "-m", "pipeline", "init", work / "p", "--image", arc, "--seed", SEED],
                                 work / "p"),
                "unpack": ([sys.executable, "-c", unpack, arc, work / "root"], work / "root"),
                "skopeo copy": (["skopeo", "copy", "-q", f"docker-archive:{arc}", f"oci:{work / 'oci'}"], work / "oci"),
                "tar -xz": (["sh", "-c", f"mkdir -p {work}/tar && tar -xOf {arc} 0/layer.tar | tar -xzf - -C {work}/tar"],
                            work / "tar"),
            }
            rows = {}
            for name, (argv, out) in commands.items():
                runs = [measure(argv, out) for _ in range(args.runs)]
                walls, peaks = sorted(w for w, _ in runs), sorted(p for _, p in runs)
                rows[name] = {"wall_s": round(walls[len(walls) // 2], 2), "peak_mib": round(peaks[len(peaks) // 2], 1)}
                print(f"{case} ({len(layer) / 2**20:.2f} MiB archive): {name}: median of {args.runs}: "
                      f"{rows[name]['wall_s']} s, peak RSS {rows[name]['peak_mib']} MiB", flush=True)
            result[case] = {"archive_bytes": arc.stat().st_size, **rows}
        print(json.dumps(result))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
