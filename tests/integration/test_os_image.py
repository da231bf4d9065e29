"""The OS stage for real (mkosi, mksquashfs, ukify, systemd-repart): the image is inspected
without booting, two clean builds are compared byte for byte, debug differs from production."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from pipeline.diff import diff_disks, diff_ukis
from pipeline.measure import fat, gpt, pe, verity
from pipeline.run import run
from tests.conftest import mb, need

pytestmark = pytest.mark.slow
TOOLS = ("mkosi", "systemd-repart", "mksquashfs", "unsquashfs", "mdir", "/usr/lib/systemd/ukify")


def section(uki: Path, name: str):
    return pe.PeImage(uki.read_bytes(), str(uki)).section_data(name)


def build_os(project: Path, profile: str) -> Path:
    need(*TOOLS)
    res = mb("os", "--project", project, "--profile", profile, "--unlocked", timeout=3600)
    if res.returncode != 0:
        pytest.fail(f"mithril-build os --profile {profile} failed (exit {res.returncode}):\n{res.stderr[-4000:]}")
    return project / "out" / profile


@pytest.fixture(scope="session")
def os_out(demo_project: Path) -> Path:
    """out/demo with the production OS (a cache hit when the session's demo build ran first)."""
    return build_os(demo_project, "demo")


@pytest.fixture(scope="session")
def os_debug(demo_project: Path, os_out: Path) -> Path:
    return build_os(demo_project, "demo-debug")


class Root:
    """Read files of the squashfs root straight from the disk image."""

    def __init__(self, disk: Path):
        self.disk = disk
        self.part = gpt.read_table(disk).by_label("root", str(disk))
        lines = run(["unsquashfs", "-o", self.part.offset, "-lln", disk]).text.splitlines()
        self.entries = {}
        for line in lines:
            fields = line.split(None, 5)
            if len(fields) == 6 and fields[5].startswith("squashfs-root"):
                path, _, target = fields[5].removeprefix("squashfs-root").partition(" -> ")
                self.entries[path or "/"] = (fields[0], target)

    def cat(self, path: str) -> str:
        return run(["unsquashfs", "-o", self.part.offset, "-cat", self.disk, path.lstrip("/")]).text

    def link(self, path: str) -> str | None:
        mode, target = self.entries.get(path, ("", ""))
        return target if mode.startswith("l") else None


@pytest.fixture(scope="session")
def root(os_out: Path) -> Root:
    return Root(os_out / "os_disk.raw")


def test_no_login_no_shell(root: Root):
    assert not any(p.endswith("/sshd") or "/ssh/" in p for p in root.entries), "sshd is in the image"
    for unit in ("getty@.service", "serial-getty@.service", "console-getty.service", "getty.target",
                 "debug-shell.service", "emergency.service", "emergency.target", "rescue.service", "rescue.target"):
        assert root.link(f"/etc/systemd/system/{unit}") == "/dev/null", f"{unit} is not masked"
    # wanted by some target (Debian ships static wants in /usr/lib) and not masked
    enabled = [p for p in root.entries if ".wants/" in p and "getty" in p
               and root.link("/etc/systemd/system/" + p.rsplit("/", 1)[1]) != "/dev/null"]
    assert not enabled, f"getty units enabled: {enabled}"
    assert "/usr/lib/systemd/system-generators/systemd-getty-generator" not in root.entries
    shadow = {line.split(":")[0]: line.split(":") for line in root.cat("/etc/shadow").splitlines()}
    assert shadow["root"][1].startswith(("!", "*")), "root is not locked"
    assert root.cat("/etc/machine-id") == ""


def test_pcr_units_masked_and_ours_enabled(root: Root):
    for unit in ("systemd-pcrphase.service", "systemd-pcrphase-initrd.service", "systemd-pcrphase-sysinit.service"):
        assert root.link(f"/etc/systemd/system/{unit}") == "/dev/null", f"{unit} is not masked"
    wants = {p.rsplit("/", 1)[1] for p in root.entries if ".wants/" in p}
    assert {"measured-setup.service", "mithril-pcr-print.service", "mithril-firewall.service"} <= wants
    unit = root.cat("/usr/lib/systemd/system/mithril-pcr-print.service")
    assert "TTYPath=/dev/ttyS0" in unit and "After=measured-setup.service" in unit


def test_firewall_default_drop(root: Root):
    for name in ("rules.v4", "rules.v6"):
        rules = root.cat(f"/usr/lib/mithril/firewall/{name}")
        for chain in ("INPUT", "FORWARD", "OUTPUT"):
            assert f":{chain} DROP" in rules, f"{name}: {chain} policy is not DROP"
        assert "--dport 443 " in rules
    assert "/usr/sbin/iptables-restore" in root.entries or "/usr/sbin/iptables-legacy-restore" in root.entries
    # fail closed: networkd (every interface) requires the rules to have loaded
    dropin = root.cat("/usr/lib/systemd/system/systemd-networkd.service.d/10-mithril-firewall.conf")
    assert "Requires=mithril-firewall.service" in dropin and "After=mithril-firewall.service" in dropin
    assert not any("--dport 53" in line for line in root.cat("/usr/lib/mithril/firewall/rules.v4").splitlines())


def test_esp_holds_only_the_uki(os_out: Path, tmp_path):
    disk = os_out / "os_disk.raw"
    with fat.open_esp(disk) as esp:
        assert esp.walk() == ["/EFI/BOOT/BOOTX64.EFI"]
    esp = gpt.read_table(disk).by_type(gpt.ESP_TYPE)[0]
    run(["mcopy", "-i", f"{disk}@@{esp.offset}", "::/EFI/BOOT/BOOTX64.EFI", tmp_path / "uki"],
        extra_env={"MTOOLS_SKIP_CHECK": "1"})
    assert (tmp_path / "uki").read_bytes() == (os_out / "uki.efi").read_bytes()


def test_cmdline_carries_roothash_of_root(os_out: Path):
    disk = os_out / "os_disk.raw"
    table = gpt.read_table(disk)
    data, hashes = table.by_label("root", str(disk)), table.by_label("root-verity", str(disk))
    cmdline = bytes(section(os_out / "uki.efi", ".cmdline")).rstrip(b"\0").decode()
    roothash = next(a.split("=", 1)[1] for a in cmdline.split() if a.startswith("roothash="))
    assert data.uuid.hex + hashes.uuid.hex == roothash
    # the stored tree matches the root partition and this roothash (checked independently of the build)
    with open(disk, "rb") as f:
        params, bad = verity.verify(f, data.offset, f, hashes.offset, bytes.fromhex(roothash))
    assert bad is None and params.data_block_size == 4096
    record = json.loads((os_out / "os.json").read_text())
    assert record["roothash"] == roothash and record["cmdline"] == cmdline
    assert record["stub"]["version"].startswith("252")  # bookworm's systemd-stub from inside the image
    assert "systemd.debug_shell=0" in cmdline and "rd.shell" not in cmdline and "console=" not in cmdline


def test_package_manifest(os_out: Path):
    packages = json.loads((os_out / "packages.json").read_text())["packages"]
    assert "systemd" in packages and "linux-image-cloud-amd64" in packages
    assert not any(p.startswith("openssh") for p in packages)


def test_reproducible(os_out: Path, demo_rebuild: Path, tmp_path):
    """Two clean builds (separate projects, caches, mkosi package caches) are byte-identical."""
    diffs = diff_ukis(os_out / "uki.efi", demo_rebuild / "uki.efi")
    diffs += diff_disks(os_out / "os_disk.raw", demo_rebuild / "os_disk.raw", scratch=tmp_path)
    assert not diffs, "OS builds differ:\n" + "\n".join(diffs)
    assert (os_out / "packages.json").read_bytes() == (demo_rebuild / "packages.json").read_bytes()
    assert (os_out / "os.json").read_bytes() == (demo_rebuild / "os.json").read_bytes()


def test_diff_helper_names_the_file(os_out: Path, tmp_path):
    """The diff helper finds a changed byte inside the UKI on the ESP and names the file."""
    disk = os_out / "os_disk.raw"
    copy = tmp_path / "copy.raw"
    shutil.copyfile(disk, copy)
    uki = (os_out / "uki.efi").read_bytes()
    raw = copy.read_bytes()
    esp = gpt.read_table(disk).by_type(gpt.ESP_TYPE)[0]
    at = raw.index(uki[-4096:], esp.offset) + 100  # a byte inside BOOTX64.EFI's last block
    with open(copy, "r+b") as f:
        f.seek(at)
        f.write(bytes([raw[at] ^ 0xFF]))
    diffs = diff_disks(disk, copy, scratch=tmp_path)
    assert any("partition esp: contents differ" in d for d in diffs), diffs
    assert any("EFI/BOOT/BOOTX64.EFI" in d and "differs" in d for d in diffs), diffs
    assert not any("root" in d for d in diffs), diffs


def test_debug_differs(os_out: Path, os_debug: Path):
    assert (os_out / "uki.efi").read_bytes() != (os_debug / "uki.efi").read_bytes()
    diffs = diff_ukis(os_out / "uki.efi", os_debug / "uki.efi")
    assert "uki.efi: section .cmdline differs" in diffs
    dbg = Root(os_debug / "os_disk.raw")
    assert dbg.link("/etc/systemd/system/serial-getty@.service") is None  # login allowed on ttyS0
    cmdline = json.loads((os_debug / "os.json").read_text())["cmdline"]
    assert "console=ttyS0" in cmdline


def zstd_frames(data: bytes) -> list[bytes]:
    """Split concatenated zstd frames (mkosi pads each initrd to 4 bytes with zeros between them)."""
    frames, pos = [], 0
    while pos < len(data):
        if data[pos:pos + 4] != b"\x28\xb5\x2f\xfd":
            pos += 1  # padding
            continue
        start, fhd = pos, data[pos + 4]
        single = fhd >> 5 & 1
        fcs = {0: single, 1: 2, 2: 4, 3: 8}[fhd >> 6]
        pos += 5 + (0 if single else 1) + (0, 1, 2, 4)[fhd & 3] + fcs
        while True:
            head = int.from_bytes(data[pos:pos + 3], "little")
            pos += 3 + (1 if (head >> 1) & 3 == 1 else head >> 3)
            if head & 1:
                break
        pos += 4 if fhd >> 2 & 1 else 0
        frames.append(data[start:pos])
    return frames


def initrd_entries(uki: Path) -> dict[str, tuple[int, bytes]]:
    """{path: (mode, data)} of the UKI's initrd (zstd-compressed newc cpio archives, concatenated)."""
    raw = b"".join(run(["zstd", "-dc"], input=frame).stdout
                   for frame in zstd_frames(bytes(section(uki, ".initrd"))))
    out, pos = {}, 0
    while pos + 110 <= len(raw):
        if raw[pos:pos + 6] != b"070701":
            pos += 4  # padding between archives
            continue
        fields = [int(raw[pos + 6 + 8 * i:pos + 14 + 8 * i], 16) for i in range(13)]
        mode, size, namesize = fields[1], fields[6], fields[11]
        name = raw[pos + 110:pos + 110 + namesize - 1].decode()
        data_at = (pos + 110 + namesize + 3) & ~3
        out[name.removeprefix(".").lstrip("/")] = (mode, raw[data_at:data_at + size])
        pos = (data_at + size + 3) & ~3
    return out


def test_initrd_masks_pcrphase(os_out: Path):
    need("zstd")
    entries = initrd_entries(os_out / "uki.efi")
    assert "usr/lib/systemd/systemd" in entries or "lib/systemd/systemd" in entries, sorted(entries)[:20]
    mode, target = entries["etc/systemd/system/systemd-pcrphase-initrd.service"]
    assert mode & 0o170000 == 0o120000 and target == b"/dev/null"
    # no shell in the (systemd) initrd of a production image, also when the root cannot be opened
    for unit in ("emergency.service", "emergency.target", "rescue.service", "rescue.target", "debug-shell.service"):
        assert f"usr/lib/systemd/system/{unit}" in entries, f"the initrd has no {unit} to mask"
        mode, target = entries[f"etc/systemd/system/{unit}"]
        assert mode & 0o170000 == 0o120000 and target == b"/dev/null", f"{unit} is not masked in the initrd"
    assert not any(p.startswith("var/log/") and p != "var/log/" for p in entries)
