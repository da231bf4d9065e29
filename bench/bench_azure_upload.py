"""Page-blob upload to Azurite: mithril-build's uploader against a naive sequential whole-file
upload (every 4 MiB page, zeros included, one at a time), in the same run.

Disk: sparse, 2 GiB, 300 MB of data in 30 extents. Run from the repository root:
    python bench/bench_azure_upload.py [--workers 4]
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.platforms.azure import upload as up
from pipeline.platforms.azure import vhd
from tests.azurite import azurite, page_blob_sas

MiB = 1 << 20
SIZE = 2048 * MiB
EXTENTS = 30
EXTENT = 10 * 1000 * 1000  # 30 x 10 MB = 300 MB of data


def make_disk(path: Path) -> int:
    rng = random.Random(7)
    slot = SIZE // EXTENTS
    with open(path, "wb") as f:
        f.truncate(SIZE)
        for i in range(EXTENTS):
            f.seek(i * slot + rng.randrange(0, slot - EXTENT) // 4096 * 4096)
            f.write(rng.randbytes(EXTENT))
    return EXTENTS * EXTENT


def naive(blob, disk: Path, size: int, footer: bytes) -> int:
    sent = 0
    with open(disk, "rb") as f:
        for off in range(0, size, up.MAX_PAGE):
            data = f.read(up.MAX_PAGE).ljust(min(up.MAX_PAGE, size - off), b"\0")
            blob.upload_page(data, offset=off, length=len(data))
            sent += len(data)
    blob.upload_page(footer, offset=size, length=len(footer))
    return sent + len(footer)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, default=4)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        disk = tmp / "disk.raw"
        data = make_disk(disk)
        size, footer = vhd.disk_footer(disk, "00" * 32, 1704067200)
        with azurite(tmp) as endpoint:
            t0 = time.monotonic()
            blob = up.blob_client(page_blob_sas(endpoint, "bench", "naive.vhd", size + 512))
            naive_sent = naive(blob, disk, size, footer)
            t_naive = time.monotonic() - t0

            blob = up.blob_client(page_blob_sas(endpoint, "bench", "ours.vhd", size + 512))
            t0 = time.monotonic()
            stats = up.Uploader(blob, workers=args.workers).upload(disk, size, footer, progress=False)
            t_ours = time.monotonic() - t0

            t0 = time.monotonic()  # resume of a finished upload: compares, sends nothing
            again = up.Uploader(blob, workers=args.workers).upload(disk, size, footer, progress=False)
            t_again = time.monotonic() - t0
    print(f"disk {SIZE / MiB:.0f} MiB, data {data / 1e6:.0f} MB in {EXTENTS} extents; "
          f"{os.cpu_count()} CPUs; Azurite 3.35.0 in memory on 127.0.0.1")
    print(f"naive sequential  : {t_naive:6.1f} s  sent {naive_sent / MiB:7.1f} MiB  "
          f"{SIZE / MiB / t_naive:6.1f} MiB/s of disk")
    print(f"mithril ({args.workers} in flight): {t_ours:6.1f} s  sent {stats.bytes_sent / MiB:7.1f} MiB  "
          f"{SIZE / MiB / t_ours:6.1f} MiB/s of disk, {stats.bytes_sent / MiB / t_ours:6.1f} MiB/s on the wire")
    print(f"resume, all present: {t_again:5.1f} s  sent {again.bytes_sent} bytes")
    print(f"ratio: {t_naive / t_ours:.1f}x faster, {naive_sent / stats.bytes_sent:.1f}x fewer bytes "
          f"(sent / data = {stats.bytes_sent / data:.3f})")


if __name__ == "__main__":
    main()
