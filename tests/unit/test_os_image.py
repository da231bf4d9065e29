"""The OS stage without building: template rendering, command lines, package drift, bad input."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

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


def with_k3s_pins(root: Path) -> Path:
    """The repository's k3s entries (URLs) with made-up sha256: what `lock` would add online."""
    lock = root / "mithril.lock"
    text = lock.read_text()
    for suffix, digest in (("/k3s\n", "a" * 64), ("/k3s-airgap-images-amd64.tar.zst\n", "b" * 64)):
        assert suffix in text
        text = text.replace(suffix, f"{suffix}    sha256: {digest}\n", 1)
    lock.write_text(text)
    return root


def render(root: Path, profile: str | None = None) -> Path:
    dest = root / "rendered" / (profile or "default")
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
    assert prod.startswith("roothash=" + "ab" * 32) and "systemd.debug_shell=0" in prod
    # dracut options do nothing in mkosi's systemd initrd: the shells are masked instead
    assert "rd.shell" not in prod and "rd.emergency" not in prod
    assert "console=" not in prod
    assert "console=ttyS0" in dbg


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
                   "mithril.lock", "files.k3s", "profile demo has k3s")
    assert not (root / "out").exists()


def test_bad_input_template_syntax(tmp_path):
    root = make_project(tmp_path)
    conf = root / "mkosi/mkosi.conf.j2"
    conf.write_text(conf.read_text().replace("{{ os.release }}", "{{ os.release }", 1))
    one_error_line(mb("os", "--project", root, "--cache-dir", root / ".cache"),
                   "mkosi/mkosi.conf.j2", "template syntax error at line")
    assert not (root / "out").exists()


def test_k3s_with_pins_renders(tmp_path):
    root = with_k3s_pins(make_project(tmp_path, lambda t: t.replace("  k3s: false", "  k3s: true")))
    ctx = ctx_for(root)
    assert {"files.k3s", "files.k3s-airgap-images"} <= set(os_image.OsImage().lock_entries(ctx))
    out = render(root)
    assert "10.42.0.0/16" in (out / "mkosi.extra/usr/lib/mithril/firewall/rules.v4").read_text()
    config = yaml.safe_load((out / "mkosi.extra/usr/lib/mithril/k3s/config.yaml").read_text())
    assert (config["cluster-cidr"], config["service-cidr"], config["cluster-dns"]) == \
        ("10.42.0.0/16", "10.43.0.0/16", "10.43.0.10")
    assert "--config /usr/lib/mithril/k3s/config.yaml" in (out / "mkosi.extra/usr/lib/systemd/system/k3s.service").read_text()
    tmpfiles = (out / "mkosi.extra/usr/lib/tmpfiles.d/mithril-k3s.conf").read_text()
    assert "k3s-airgap-images.tar.zst" in tmpfiles
    assert (out / "mkosi.extra/usr/lib/systemd/system/k3s.service").is_file()
    assert "/run/rancher" in (out / "mkosi.finalize").read_text()


def test_locked_without_package_pins_fails_before_building(tmp_path):
    root = make_project(tmp_path, lock_extra="debs: {}\n")  # a later key replaces the repository's
    one_error_line(mb("os", "--project", root, "--cache-dir", root / ".cache", "--locked"),
                   "mithril.lock", "debs.os: not pinned (--locked)")
    assert not (root / "out").exists()


# ---- firewall, fail-closed network, hardening, NVIDIA: the rendered files

def rules(out: Path, family="v4") -> list[str]:
    return [line for line in (out / f"mkosi.extra/usr/lib/mithril/firewall/rules.{family}").read_text().splitlines()
            if line.startswith("-A")]


def iptables_accepts(path: Path, tool="iptables-restore"):
    """The reference parser: iptables-restore --test (in a network namespace of its own)."""
    from pipeline.run import run
    from tests.conftest import need

    need(tool, "unshare")
    run(["unshare", "-n", tool, "--test", path])


def test_firewall_qemu_demo_is_the_seed_default_deny(tmp_path):
    out = render(make_project(tmp_path))
    v4 = rules(out)
    assert not any("--dport 53" in r for r in v4), "no DNS at all under QEMU"
    assert not any(r.startswith("-A FORWARD") for r in v4) and "*mangle" not in (
        out / "mkosi.extra/usr/lib/mithril/firewall/rules.v4").read_text()
    assert [r for r in v4 if r.startswith("-A INPUT -p tcp")] == [
        "-A INPUT -p tcp --dport 443 -m conntrack --ctstate NEW -j ACCEPT"]
    assert not any("--dport 53" in r for r in rules(out, "v6"))
    for family, tool in (("v4", "iptables-restore"), ("v6", "ip6tables-restore")):
        iptables_accepts(out / f"mkosi.extra/usr/lib/mithril/firewall/rules.{family}", tool)


@pytest.mark.parametrize("profile", ["llama", "llama-a100"])
def test_firewall_azure_k3s_limits_dns_imds_and_pods(tmp_path, profile):
    out = render(with_k3s_pins(make_project(tmp_path)), profile)
    text = (out / "mkosi.extra/usr/lib/mithril/firewall/rules.v4").read_text()
    v4 = rules(out)
    dns = [r for r in v4 if "--dport 53" in r and ("OUTPUT" in r or "168.63" in r)]
    assert dns and all("-d 168.63.129.16/32" in r for r in dns), "DNS only to Azure's resolver"
    assert "-A OUTPUT -d 169.254.169.254/32 -p tcp --dport 80 -j ACCEPT" in v4
    # no blanket accept of the pod range anywhere: every FORWARD/pod rule names ports or state
    for r in v4:
        if r.startswith(("-A FORWARD", "-A MITHRIL-PODS")) and not r.endswith(("-j DROP", "-j MITHRIL-PODS")):
            assert "--dport" in r or "--dports" in r or "ESTABLISHED" in r, r
    assert not any(r.startswith("-A INPUT -s 10.42.0.0/16") and "--dport" not in r for r in v4)
    # mangle FORWARD runs before the filter rules k3s, flannel and kube-router add, and ends in DROP
    mangle = text[text.index("*mangle"):text.index("COMMIT")]
    assert "-A FORWARD -j MITHRIL-PODS" in mangle and mangle.rstrip().endswith("-A MITHRIL-PODS -j DROP")
    assert "--dports 8000,8400,53" in mangle
    iptables_accepts(out / "mkosi.extra/usr/lib/mithril/firewall/rules.v4")


def test_network_cannot_come_up_without_the_firewall(tmp_path):
    out = render(make_project(tmp_path))
    import configparser

    dropin = configparser.ConfigParser()
    dropin.read(out / "mkosi.extra/usr/lib/systemd/system/systemd-networkd.service.d/10-mithril-firewall.conf")
    assert dropin["Unit"]["Requires"] == "mithril-firewall.service" == dropin["Unit"]["After"]


def test_shells_masked_in_initrd_and_root_in_production(tmp_path):
    root = make_project(tmp_path)
    prod, dbg = render(root), render(root, "demo-debug")
    initrd = (prod / "initrd/mkosi.finalize").read_text()
    for unit in ("emergency.service", "emergency.target", "rescue.service", "rescue.target", "debug-shell.service"):
        assert unit in initrd and unit in (prod / "mkosi.finalize").read_text()
    assert "emergency.target" not in (dbg / "initrd/mkosi.finalize").read_text()
    assert (prod / "initrd/mkosi.finalize").stat().st_mode & 0o100
    assert "FinalizeScripts=mkosi.finalize" in (prod / "initrd/mkosi.conf").read_text()


def test_nvidia_profile_renders_the_driver_and_its_setup(tmp_path):
    from pipeline import gpu

    out = render(with_k3s_pins(make_project(tmp_path)), "llama")
    conf = (out / "mkosi.conf").read_text()
    assert all(p in conf for p in gpu.PACKAGES) and "Repositories=main,contrib,non-free,non-free-firmware" in conf
    assert "nvidia-container-toolkit" not in conf and "nvidia-driver\n" not in conf
    fin = (out / "mkosi.finalize").read_text()
    assert gpu.LIB_DIR in fin and all(lib in fin for lib in gpu.LIBS)
    extra = out / "mkosi.extra/usr/lib"
    assert "Requires=mithril-nvidia.service" in (extra / "systemd/system/k3s.service.d/10-nvidia.conf").read_text()
    setup = (extra / "mithril/nvidia-setup").read_text()
    assert "mknod" in setup and "WITHOUT GPU attestation" in setup
    assert not (render(make_project(tmp_path / "demo")) / "mkosi.extra/usr/lib/mithril/nvidia-setup").exists()
