"""One NVIDIA driver version in a GPU image: the lock reads Debian's non-main components
(gpgv-verified like main), the driver version is chosen deliberately (pipeline/gpu.py,
docs/gpu.md), and a package set whose driver packages differ in version is refused, naming them.

The expected values come from Debian's real, signed indices (deb.debian.org, security.debian.org):
bookworm's open kernel module is 535.261.03 (contrib only) while bookworm-security carries the
proprietary module, the GSP firmware and the libraries at 535.309.01."""

from __future__ import annotations

import shutil

import pytest
import yaml

from pipeline import debian, gpu
from pipeline import lock as lk
from pipeline.errors import BadInput
from tests.conftest import REPO, mb, need


@pytest.fixture(scope="module")
def all_components(tmp_path_factory):
    need("gpgv", debian.KEYRING)
    return debian.archive(lk.load(REPO / "mithril.lock").debian, tmp_path_factory.mktemp("debian-indices"),
                          gpu.COMPONENTS)


def pick(arch, name: str, version: str | None = None) -> debian.Package:
    cands = arch.by_name[name]
    return next(p for p in cands if version is None or p.version == version)


def test_driver_packages_are_in_the_non_main_components(all_components):
    for name in gpu.DRIVER_PACKAGES:
        listed = {p.version for p in all_components.by_name[name]}
        assert gpu.DRIVER_VERSION in listed, (name, listed)
    # the facts the choice rests on (docs/gpu.md): the open module exists at one version only
    assert [p.version for p in all_components.by_name["nvidia-open-kernel-dkms"]] == [gpu.DRIVER_VERSION]
    assert pick(all_components, "nvidia-open-kernel-dkms").url.split("/pool/")[1].startswith("contrib/")
    newest = pick(all_components, "libcuda1")
    assert newest.suite == "bookworm-security" and gpu.upstream_version(newest.version) != "535.261.03"


def test_the_chosen_driver_set_is_coherent(all_components):
    pins = {n: pick(all_components, n, gpu.DRIVER_VERSION) for n in gpu.DRIVER_PACKAGES}
    assert gpu.check_driver(pins, "t") == gpu.upstream_version(gpu.DRIVER_VERSION)
    # every dependency of theirs on a driver package is met by the chosen set itself (by name and
    # version, or a Provides such as firmware-nvidia-gsp-535.261.03), never by another version
    provided: dict[str, list] = {}
    for p in pins.values():
        provided.setdefault(p.name, []).append(p.version)
        for (rel,) in (g for g in p.relations("provides") if len(g) == 1):
            provided.setdefault(rel.name, []).append(rel.version)
    for p in pins.values():
        for group in p.relations("pre_depends") + p.relations("depends"):
            driver = any(gpu.source_of(c.url) in gpu.DRIVER_SOURCES for rel in group
                         for c in all_components.candidates(rel))
            if driver:
                assert any(rel.allows(v) for rel in group for v in provided.get(rel.name, [])), \
                    (p.name, " | ".join(map(str, group)))


def test_newest_versions_are_refused_naming_the_packages(all_components):
    """Mutation: what apt takes by default (the newest of each name) mixes driver versions."""
    pins = {n: pick(all_components, n) for n in gpu.DRIVER_PACKAGES}
    with pytest.raises(BadInput, match=r"NVIDIA driver packages of different versions \(535\.261\.03: "
                                       r"nvidia-open-kernel-dkms .*; 535\.309\.01: .*libcuda1 535\.309\.01"):
        gpu.check_driver(pins, "t")


def test_only_driver_sources_count():
    """nvidia-modprobe and the like have versions of their own: not part of the check."""
    from pipeline.lock import DebPin

    pin = lambda v, src: DebPin(version=v, sha256="0" * 64, size=1, url=f"http://x/pool/c/n/{src}/f.deb")
    assert gpu.check_driver({"nvidia-modprobe": pin("535.161.07-1", "nvidia-modprobe"),
                             "libcuda1": pin("535.261.03-1", "nvidia-graphics-drivers")}, "t") == "535.261.03"
    assert gpu.check_driver({"nvidia-modprobe": pin("1", "nvidia-modprobe")}, "t") is None


def test_the_build_refuses_a_mixed_lock_with_exit_2(tmp_path):
    """A mithril.lock whose debs.os mixes driver versions stops the GPU profile's OS stage before
    anything is built: exit 2, one line naming the packages."""
    project = tmp_path / "p"
    shutil.copytree(REPO, project, ignore=shutil.ignore_patterns(".git", ".mithril", "out", ".tools", "__pycache__"))
    lock = yaml.safe_load((project / "mithril.lock").read_text())
    deb = lambda v, src, n: {"version": v, "sha256": "0" * 64, "size": 1,
                             "url": f"http://deb.debian.org/debian/pool/non-free/n/{src}/{n}_{v}_amd64.deb"}
    lock["debs"]["os"]["nvidia-open-kernel-dkms"] = deb("535.261.03-1", "nvidia-open-gpu-kernel-modules",
                                                        "nvidia-open-kernel-dkms")
    lock["debs"]["os"]["libcuda1"] = deb("535.309.01-0+deb12u1", "nvidia-graphics-drivers", "libcuda1")
    (project / "mithril.lock").write_text(yaml.safe_dump(lock))
    res = mb("os", "--profile", "llama", "--unlocked", "--cache-dir", tmp_path / "cache", cwd=project)
    assert res.returncode == 2, res.stderr
    assert "NVIDIA driver packages of different versions" in res.stderr and "libcuda1 535.309.01" in res.stderr
    assert [line.startswith("mithril-build: error: mithril.lock: debs.os: NVIDIA driver packages")
            for line in res.stderr.splitlines() if "error" in line] == [True]
    assert not (project / "out").exists()


def test_package_set_does_not_depend_on_k3s():
    """`lock` builds a k3s profile's OS online without k3s (its binary may be unreachable): that
    is the same package set only while mkosi.conf.j2 does not depend on k3s."""
    assert "k3s" not in (REPO / "mkosi" / "mkosi.conf.j2").read_text()


def test_rendered_mkosi_config_pins_every_driver_package(tmp_path):
    res = mb("render", "--profile", "llama", tmp_path / "r", cwd=REPO)
    assert res.returncode == 0, res.stderr
    conf = (tmp_path / "r" / "mkosi" / "mkosi.conf").read_text()
    assert "Repositories=main,contrib,non-free,non-free-firmware" in conf
    for name in gpu.DRIVER_PACKAGES:
        assert f"        {name}={gpu.DRIVER_VERSION}\n" in conf


def test_gpu_image_builds_its_module_deliberately(tmp_path):
    """A GPU image stops dpkg's DKMS hook (skeleton, before the packages) and builds the module in
    mkosi.postinst.chroot, unsigned (no random MOK key in the image); other images get neither."""
    for profile in ("llama", "demo"):
        assert mb("render", "--profile", profile, tmp_path / profile, cwd=REPO).returncode == 0
    gpu_conf = tmp_path / "llama" / "mkosi"
    assert (gpu_conf / "mkosi.skeleton/etc/dkms/no-autoinstall").is_file()
    assert "sign_file=/nonexistent" in (gpu_conf / "mkosi.skeleton/etc/dkms/framework.conf.d/mithril.conf").read_text()
    postinst = (gpu_conf / "mkosi.postinst.chroot").read_text()
    assert "dkms build" in postinst and "SOURCE_DATE_EPOCH=1704067200" in postinst
    assert (gpu_conf / "mkosi.postinst.chroot").stat().st_mode & 0o111
    assert not (tmp_path / "demo" / "mkosi" / "mkosi.skeleton").exists()
    assert not (tmp_path / "demo" / "mkosi" / "mkosi.postinst.chroot").exists()
