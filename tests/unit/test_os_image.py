"""The OS stage without building: template rendering, command lines, package drift, bad input."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from pipeline import project
from pipeline.errors import BadInput, VerificationFailed
from pipeline.stages import os_image
from tests.conftest import REPO, mb


def make_project(tmp_path: Path, yaml_edit=None, lock_extra: str = "") -> Path:
    root = tmp_path / "p"
    root.mkdir(parents=True)
    shutil.copytree(REPO / "mkosi", root / "mkosi")
    text = (REPO / "mithril.yaml").read_text()
    if yaml_edit:
        text = yaml_edit(text)
    (root / "mithril.yaml").write_text(text)
    (root / "mithril.lock").write_text((REPO / "mithril.lock").read_text() + lock_extra)
    return root


def ctx_for(root: Path, profile: str | None = None, locked: bool = False):
    return project.context(root, profile, None, root / ".cache", locked)


def render(root: Path, profile: str | None = None) -> Path:
    dest = root / "rendered"
    os_image.render_config(ctx_for(root, profile), dest)
    return dest


def test_production_render(tmp_path):
    out = render(make_project(tmp_path, lock_extra="debs: {}\n"))  # unpinned: the online sources
    conf = (out / "mkosi.conf").read_text()
    assert "Format=directory" in conf and "linux-image-cloud-amd64" in conf
    assert "Autologin" not in conf and "openssh" not in conf
    sources = (out / "mkosi.pkgmngr/etc/apt/sources.list.d/mkosi.sources").read_text()
    assert "URIs: http://deb.debian.org/debian-debug" not in sources and "bookworm-security" in sources
    v4 = (out / "mkosi.extra/usr/lib/mithril/firewall/rules.v4").read_text()
    for chain in ("INPUT", "FORWARD", "OUTPUT"):
        assert f":{chain} DROP" in v4
    assert "--dport 443 " in v4 and "169.254.169.254" not in v4  # IMDS only on Azure
    fin = (out / "mkosi.finalize").read_text()
    assert "serial-getty@.service" in fin and "{{" not in fin
    assert (out / "mkosi.finalize").stat().st_mode & 0o100
    assert not (out / "repart.d").exists()


def test_debug_render_and_azure(tmp_path):
    root = make_project(tmp_path, lambda t: t.replace("platform: qemu\n    mode: debug", "platform: azure-cvm\n    mode: debug"))
    out = render(root, "demo-debug")
    assert "Autologin=yes" in (out / "mkosi.conf").read_text()
    assert "getty" not in (out / "mkosi.finalize").read_text().split("production")[0] or True
    assert "serial-getty@.service" not in (out / "mkosi.finalize").read_text()
    assert "169.254.169.254" in (out / "mkosi.extra/usr/lib/mithril/firewall/rules.v4").read_text()


def test_cmdline_modes():
    prod, dbg = os_image.kernel_cmdline("production", "ab" * 32), os_image.kernel_cmdline("debug", "ab" * 32)
    assert prod.startswith("roothash=" + "ab" * 32) and "rd.shell=0" in prod and "rd.emergency=reboot" in prod
    assert "console=" not in prod
    assert "console=ttyS0" in dbg and "rd.shell=0" not in dbg


def test_key_changes_with_mode_and_templates(tmp_path):
    root = make_project(tmp_path)
    prod = os_image.render_config(ctx_for(root), None)
    dbg = os_image.render_config(ctx_for(root, "demo-debug"), None)
    assert prod != dbg
    tpl = root / "mkosi/mkosi.extra/usr/lib/mithril/firewall/rules.v4.j2"
    tpl.write_text(tpl.read_text() + "# changed\n")
    assert os_image.render_config(ctx_for(root), None) != prod


PIN = "{sha256: '%s', size: 1, url: 'http://deb.debian.org/debian/pool/main/s/systemd/s.deb', version: '%s'}\n"


def test_pinned_builds_install_only_pinned_versions(tmp_path):
    root = make_project(tmp_path, lock_extra="debs:\n  os:\n    systemd: " + PIN % ("0" * 64, "252.1"))
    pins = os_image.os_pins(ctx_for(root, locked=True))
    os_image.check_packages(pins, {"systemd": "252.1"})
    with pytest.raises(VerificationFailed, match=r"systemd 252.39 \(pinned 252.1\); udev 1 \(not pinned\)"):
        os_image.check_packages(pins, {"systemd": "252.39", "udev": "1"})
    # a pinned build renders no online sources: mkosi sees the local repository only
    assert not any("sources.list.d" in k for k in os_image.render_config(ctx_for(root, locked=True), None))
    bare = make_project(tmp_path / "bare", lock_extra="debs: {}\n")  # a later key replaces the repository's
    assert os_image.os_pins(ctx_for(bare, locked=False)) is None
    assert any("sources.list.d" in k for k in os_image.render_config(ctx_for(bare, locked=False), None))
    with pytest.raises(BadInput, match=r"debs.os: not pinned \(--locked\)"):
        os_image.os_pins(ctx_for(bare, locked=True))


def test_stub_version():
    sections = {".sdmagic": b"#### LoaderInfo: systemd-stub 252.39-1~deb12u2 ####\0"}
    assert os_image.stub_version(sections) == "252.39-1~deb12u2"
    assert os_image.stub_version({}) == "unknown"


def one_error_line(res, *needles):
    assert res.returncode == 2, res.stderr
    lines = [line for line in res.stderr.splitlines() if "error" in line]
    assert len(lines) == 1 and "Traceback" not in res.stderr, res.stderr
    for n in needles:
        assert n in lines[0], lines[0]


def test_bad_input_unknown_os_option(tmp_path):
    root = make_project(tmp_path, lambda t: t.replace("  tpm2_tools: false\n", "  tpm2_tools: false\n  sshd: true\n"))
    one_error_line(mb("os", "--project", root, "--cache-dir", root / ".cache"), "mithril.yaml", "os.sshd", "unknown key")


def test_bad_input_k3s_without_pin(tmp_path):
    root = make_project(tmp_path, lambda t: t.replace("  k3s: false", "  k3s: true"))
    one_error_line(mb("os", "--project", root, "--cache-dir", root / ".cache"),
                   "mithril.lock", "files.k3s", "os.k3s is true")
    assert not (root / "out").exists()


def test_bad_input_template_syntax(tmp_path):
    root = make_project(tmp_path)
    conf = root / "mkosi/mkosi.conf.j2"
    conf.write_text(conf.read_text().replace("{{ os.release }}", "{{ os.release }", 1))
    one_error_line(mb("os", "--project", root, "--cache-dir", root / ".cache"),
                   "mkosi/mkosi.conf.j2", "template syntax error at line")
    assert not (root / "out").exists()


def test_k3s_with_pins_renders(tmp_path):
    lock = ("  k3s:\n    path: k3s.bin\n    sha256: " + "a" * 64 + "\n"
            "  k3s-airgap-images:\n    url: https://example.invalid/k3s-airgap-images-amd64.tar.zst\n"
            "    sha256: " + "b" * 64 + "\n")
    root = make_project(tmp_path, lambda t: t.replace("  k3s: false", "  k3s: true"))
    text = (root / "mithril.lock").read_text().replace("\nfiles:\n", "\nfiles:\n" + lock, 1)
    (root / "mithril.lock").write_text(text)
    ctx = ctx_for(root)
    assert set(os_image.OsImage().key_inputs(ctx)["lock"]["files"]) == {"k3s", "k3s-airgap-images"}
    out = render(root)
    assert "10.42.0.0/16" in (out / "mkosi.extra/usr/lib/mithril/firewall/rules.v4").read_text()
    tmpfiles = (out / "mkosi.extra/usr/lib/tmpfiles.d/mithril-k3s.conf").read_text()
    assert "k3s-airgap-images.tar.zst" in tmpfiles
    assert (out / "mkosi.extra/usr/lib/systemd/system/k3s.service").is_file()
    assert "/run/rancher" in (out / "mkosi.finalize").read_text()


def test_locked_without_package_pins_fails_before_building(tmp_path):
    root = make_project(tmp_path, lock_extra="debs: {}\n")  # a later key replaces the repository's
    one_error_line(mb("os", "--project", root, "--cache-dir", root / ".cache", "--locked"),
                   "mithril.lock", "debs.os: not pinned (--locked)")
    assert not (root / "out").exists()
