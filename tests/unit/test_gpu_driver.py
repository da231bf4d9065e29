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
from tests.conftest import REPO, mb, need, new_project


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
    """A mithril.lock whose debs.os-nvidia mixes driver versions stops the GPU profile's OS stage before
    anything is built: exit 2, one line naming the packages."""
    project = tmp_path / "p"
    shutil.copytree(REPO, project, ignore=shutil.ignore_patterns(".git", ".mithril", "out", ".tools", "__pycache__"))
    lock = yaml.safe_load((project / "mithril.lock").read_text())
    deb = lambda v, src, n: {"version": v, "sha256": "0" * 64, "size": 1,
                             "url": f"http://deb.debian.org/debian/pool/non-free/n/{src}/{n}_{v}_amd64.deb"}
    gpu_debs = lock["debs"].setdefault("os-nvidia", {})
    gpu_debs["nvidia-open-kernel-dkms"] = deb("535.261.03-1", "nvidia-open-gpu-kernel-modules", "nvidia-open-kernel-dkms")
    gpu_debs["libcuda1"] = deb("535.309.01-0+deb12u1", "nvidia-graphics-drivers", "libcuda1")
    (project / "mithril.lock").write_text(yaml.safe_dump(lock))
    res = mb("os", "--profile", "llama", "--unlocked", "--cache-dir", tmp_path / "cache", cwd=project)
    assert res.returncode == 2, res.stderr
    assert "NVIDIA driver packages of different versions" in res.stderr and "libcuda1 535.309.01" in res.stderr
    assert [line.startswith("mithril-build: error: mithril.lock: debs.os-nvidia: NVIDIA driver packages")
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


# ---------------------------------------------------------------- the held kernel

def test_the_gpu_kernel_is_held_at_a_bookworm_point_release(all_components):
    """gpu.KERNEL_VERSION is bookworm's (main, not the security suite) and older than what apt takes
    by default: the pin is deliberate, and the check refuses the default set, naming the packages."""
    roots = ("linux-image-cloud-amd64", *gpu.KERNEL_PACKAGES)
    held = {n: pick(all_components, n, gpu.KERNEL_VERSION) for n in roots}
    assert {p.suite for p in held.values()} == {"bookworm"}
    assert all(gpu.source_of(p.url) in gpu.KERNEL_SOURCES for p in held.values())
    image = pick(all_components, "linux-image-6.1.0-50-cloud-amd64", gpu.KERNEL_VERSION)  # what the metapackage names
    assert f"linux-image-6.1.0-50-cloud-amd64 (= {gpu.KERNEL_VERSION})" in held["linux-image-cloud-amd64"].depends
    gpu.check_kernel({**held, image.name: image}, "t")
    newest = {n: pick(all_components, n) for n in roots}
    assert all(debian.compare_versions(p.version, gpu.KERNEL_VERSION) > 0 for p in newest.values())
    with pytest.raises(BadInput, match=r"t: kernel packages not at 6\.1\.176-1: linux-compiler-gcc-12-x86 6\.1\."):
        gpu.check_kernel(newest, "t")


def test_only_gpu_images_hold_the_kernel_and_use_their_own_debs(tmp_path):
    """The default image's mkosi.conf names the kernel unversioned (its pins: debs.os); a GPU image's
    names every kernel package at gpu.KERNEL_VERSION (its pins: debs.os-nvidia)."""
    from pipeline.config import OsConfig
    from pipeline.stages.os_image import debs_key

    assert (debs_key(OsConfig()), debs_key(OsConfig(k3s=True, nvidia=True))) == ("os", "os-nvidia")
    for profile in ("demo", "gpu-local"):
        assert mb("render", "--profile", profile, tmp_path / profile, cwd=REPO).returncode == 0
    demo = (tmp_path / "demo" / "mkosi" / "mkosi.conf").read_text()
    assert "        linux-image-cloud-amd64\n" in demo and "=6.1" not in demo and "linux-headers" not in demo
    conf = (tmp_path / "gpu-local" / "mkosi" / "mkosi.conf").read_text()
    for name in ("linux-image-cloud-amd64", *gpu.KERNEL_PACKAGES):
        assert f"        {name}={gpu.KERNEL_VERSION}\n" in conf


def test_a_stand_in_is_logged_and_refused_when_locked(tmp_path):
    """A lock entry pinned to a labelled stand-in (how the tests build gpu-local without k3s):
    every run says so; --locked refuses it (exit 2, one line), so no release is built from one."""
    project = new_project(tmp_path / "p")
    (project / "k3s").write_bytes(b"#!/bin/sh\nexit 1\n")
    lock = lk.load(project / "mithril.lock")
    lock.files["k3s"] = lk.FilePin(path="k3s", sha256="9" * 64, stand_in="k3s is unreachable here")
    lk.dump(lock, project / "mithril.lock")
    res = mb("plan", "--profile", "gpu-local", "--locked", "--cache-dir", tmp_path / "c", cwd=project)
    assert res.returncode == 2, res.stderr
    assert [line for line in res.stderr.splitlines() if "error" in line] == [
        "mithril-build: error: mithril.lock: files.k3s: a stand-in, not the real input (k3s is unreachable here), "
        "refused with --locked (pin the real file with `mithril-build lock` where its source is reachable)"]
    res = mb("plan", "--profile", "gpu-local", "--unlocked", "--cache-dir", tmp_path / "c", cwd=project)
    assert "files.k3s: a STAND-IN, not the real input: k3s is unreachable here" in res.stderr, res.stderr
