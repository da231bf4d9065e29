"""Test inputs for pipeline/measure: UKIs built here with ukify from Debian's kernel and
systemd-stub packages, and GPT disk images with a FAT ESP built rootless (mkfs.vfat, mcopy,
sfdisk on a file). Downloads (.deb) are kept in ~/.cache/mithril-build/test-debs
($MITHRIL_TEST_CACHE) so only the first run needs the Debian archive.
"""

from __future__ import annotations

import os
import re
import shutil
import tarfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from pipeline.errors import ToolFailed
from pipeline.run import SYSTEM_PATH, run
from tests.conftest import need

UKIFY = "/usr/lib/systemd/ukify"
MEASURE = "/usr/lib/systemd/systemd-measure"
STUB_254 = Path("/usr/lib/systemd/boot/efi/linuxx64.efi.stub")
ENV = {"PATH": SYSTEM_PATH, "SOURCE_DATE_EPOCH": "1700000000"}
ESP_TYPE = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
LINUX_TYPE = "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709"
CMDLINE = "console=ttyS0 ro roothash=" + "ab" * 32
OSREL = 'ID=mithril\nNAME="Mithril OS"\nVERSION_ID=1\n'


def cache_dir() -> Path:
    d = Path(os.environ.get("MITHRIL_TEST_CACHE", Path.home() / ".cache" / "mithril-build" / "test-debs"))
    d.mkdir(parents=True, exist_ok=True)
    return d


def download(package: str) -> Path:
    """A .deb for `package` (name or name/suite), cached; skips the test when apt cannot get it."""
    d = cache_dir()
    stem = package.split("/")[0]
    have = sorted(d.glob(f"{stem}_*.deb"))
    if have:
        return have[-1]
    try:
        run(["apt-get", "download", "-q", package], cwd=d, extra_env={"PATH": SYSTEM_PATH})
    except ToolFailed as e:
        pytest.skip(f"cannot download {package} from the Debian archive (offline?): {str(e).splitlines()[0]}")
    have = sorted(d.glob(f"{stem}_*.deb"))
    assert have, f"apt-get download {package} left no .deb in {d}"
    return have[-1]


def extract(deb: Path, pattern: str, dest: Path) -> Path:
    """The first file of the .deb whose path matches `pattern` (regex), cached next to the .deb."""
    out = dest / (deb.stem + "." + re.sub(r"\W", "_", pattern))
    if out.exists():
        return out
    tar_path = dest / (deb.stem + ".tar.tmp")
    with open(tar_path, "wb") as f:
        run(["dpkg-deb", "--fsys-tarfile", deb], stdout=f, extra_env={"PATH": SYSTEM_PATH})
    try:
        with tarfile.open(tar_path) as tar:
            for m in tar:
                if m.isfile() and re.search(pattern, m.name):
                    tmp = out.with_suffix(".part")
                    with tar.extractfile(m) as src, open(tmp, "wb") as dst:
                        shutil.copyfileobj(src, dst)
                    tmp.rename(out)
                    return out
    finally:
        tar_path.unlink()
    raise AssertionError(f"{deb.name} has no file matching {pattern}")


@dataclass(frozen=True)
class Parts:
    kernel: Path
    stub252: Path
    stub254: Path
    initrd: Path
    osrel: Path
    work: Path


def parts(work: Path) -> Parts:
    need(UKIFY, "dpkg-deb", "apt-get")
    kernel_pkg = run(["apt-cache", "depends", "linux-image-cloud-amd64"], extra_env={"PATH": SYSTEM_PATH}).text
    m = re.search(r"Depends: (linux-image-[\w.+-]+)", kernel_pkg)
    assert m, kernel_pkg
    kernel = extract(download(m.group(1)), r"boot/vmlinuz-", cache_dir())
    stub252 = extract(download("systemd-boot-efi/bookworm"), r"linuxx64\.efi\.stub$", cache_dir())
    if not STUB_254.exists():
        pytest.skip(f"needs {STUB_254} (systemd-boot-efi 254 from bookworm-backports, scripts/setup.sh)")
    initrd = work / "initrd"
    initrd.write_bytes(b"070701" + bytes(range(256)) * 64)  # fixed bytes; nothing boots it
    osrel = work / "os-release"
    osrel.write_text(OSREL)
    return Parts(kernel, stub252, STUB_254, initrd, osrel, work)


def build_uki(p: Parts, out: Path, stub: Path, cmdline: str = CMDLINE, extra: list[str] = ()) -> Path:
    run([UKIFY, "build", f"--linux={p.kernel}", f"--initrd={p.initrd}", f"--cmdline={cmdline}",
         f"--os-release=@{p.osrel}", f"--stub={stub}", "--uname=6.1.0-test-cloud-amd64", *extra,
         f"--output={out}"], extra_env=ENV)
    return out


def make_fat(path: Path, files: dict[str, bytes], fat: int = 32, size_mb: int = 64, cluster_sectors: int = 0) -> Path:
    """A FAT image holding `files` ({"/EFI/BOOT/BOOTX64.EFI": bytes}); fixed volume id and label."""
    need("mkfs.vfat", "mcopy", "mmd")
    with open(path, "wb") as f:
        f.truncate(size_mb << 20)
    extra = ["-s", str(cluster_sectors)] if cluster_sectors else []
    run(["mkfs.vfat", "-F", str(fat), "-i", "12345678", "-n", "ESP", *extra, path], extra_env=ENV)
    src = path.parent / (path.name + ".src")
    made = set()
    for name, data in files.items():
        parts = name.strip("/").split("/")
        for i in range(1, len(parts)):
            d = "/".join(parts[:i])
            if d not in made:
                run(["mmd", "-i", path, "::/" + d], extra_env={**ENV, "MTOOLS_SKIP_CHECK": "1"})
                made.add(d)
        src.write_bytes(data)
        run(["mcopy", "-i", path, src, "::/" + "/".join(parts)], extra_env={**ENV, "MTOOLS_SKIP_CHECK": "1"})
    src.unlink(missing_ok=True)
    return path


def make_disk(path: Path, esp_image: Path | None, root_mb: int = 8) -> Path:
    """A GPT disk: partition 1 = the given FAT image as ESP (if any), partition 2 = a root of
    fixed bytes. Partition and disk UUIDs are fixed."""
    need("sfdisk")
    esp_sectors = esp_image.stat().st_size // 512 if esp_image else 2048
    root_sectors = root_mb << 11
    total = 2048 + esp_sectors + root_sectors + 2048
    with open(path, "wb") as f:
        f.truncate(total * 512)
    esp_type = ESP_TYPE if esp_image else LINUX_TYPE
    script = (f"label: gpt\nlabel-id: 11111111-2222-3333-4444-555555555555\nunit: sectors\n"
              f"start=2048, size={esp_sectors}, type={esp_type}, uuid=aaaaaaaa-0000-0000-0000-000000000001, name=esp\n"
              f"start={2048 + esp_sectors}, size={root_sectors}, type={LINUX_TYPE}, "
              f"uuid=aaaaaaaa-0000-0000-0000-000000000002, name=root\n")
    run(["sfdisk", "-q", "--no-reread", "--no-tell-kernel", path], input=script.encode(), extra_env=ENV)
    with open(path, "r+b") as f:
        if esp_image:
            f.seek(2048 * 512)
            with open(esp_image, "rb") as src:
                shutil.copyfileobj(src, f, 1 << 20)
        f.seek((2048 + esp_sectors) * 512)
        f.write(bytes(range(256)) * (root_sectors * 2))
    return path


def os_disk(work: Path, uki: bytes, name: str = "os_disk.raw", extra_files: dict[str, bytes] | None = None,
            fat: int = 32) -> Path:
    files = {"/EFI/BOOT/BOOTX64.EFI": uki, **(extra_files or {})}
    size = max(64, (len(uki) >> 20) * 2 + 8)
    esp = make_fat(work / (name + ".esp"), files, fat=fat, size_mb=size)
    disk = make_disk(work / name, esp)
    esp.unlink()
    return disk


def app_disk(path: Path, roothash: str) -> Path:
    """A stand-in application disk: two partitions whose UUIDs are the roothash halves."""
    import uuid

    need("sfdisk")
    with open(path, "wb") as f:
        f.truncate(4 << 20)
    a, b = uuid.UUID(roothash[:32]), uuid.UUID(roothash[32:])
    script = (f"label: gpt\nlabel-id: 11111111-2222-3333-4444-666666666666\nunit: sectors\n"
              f"start=2048, size=2048, type={LINUX_TYPE}, uuid={a}, name=app\n"
              f"start=4096, size=2048, type={LINUX_TYPE}, uuid={b}, name=app-verity\n")
    run(["sfdisk", "-q", "--no-reread", "--no-tell-kernel", path], input=script.encode(), extra_env=ENV)
    return path
