"""Unpacking image archives, checked against podman: an image built by `podman build` with
deleted files, a replaced folder (opaque whiteout), a symlinked parent and a hard link, saved as
docker-archive and as oci-archive, unpacks to exactly the tree `podman export` gives."""

from __future__ import annotations

import hashlib
import os
import tarfile
from pathlib import Path

import pytest
import yaml

from pipeline.archive import Entry, deb_member, deterministic_tar
from pipeline.lock import download, sha256_file
from pipeline.oci_read import read_image, unpack
from pipeline.run import run
from tests.conftest import REPO, need

CONTAINERFILE = """FROM localhost/mithril-test-base:1
RUN ["/bin/busybox", "sh", "-c", "for a in mkdir rm ln echo; do /bin/busybox ln -s busybox /bin/$a; done; \\
mkdir -p /data/keep /data/gone /opq && echo a > /data/keep/a && echo b > /data/gone/b && ln -s /data/keep /link \\
&& echo x > /hard1 && ln /hard1 /hard2 && echo 1 > /opq/one"]
RUN ["/bin/sh", "-c", "rm -rf /data/gone /www/index.html && rm -rf /opq && mkdir /opq && echo 2 > /opq/two \\
&& echo c > /link/c"]
"""
RUNC = ["--runtime", "runc", "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=4096:4096"]  # see ENVIRONMENT.md


@pytest.fixture(scope="module")
def podman_image(tmp_path_factory):
    need("podman")
    d = tmp_path_factory.mktemp("podman")
    pin = yaml.safe_load((REPO / "mithril.lock").read_text())["files"]["busybox-static"]
    deb = d / "busybox.deb"
    download(pin["url"], deb, "busybox-static")
    assert sha256_file(deb) == pin["sha256"]
    rootfs = [Entry("bin", 0o755), Entry("bin/busybox", 0o755, deb_member(deb, "./bin/busybox")),
              Entry("bin/sh", 0o777, target="busybox"), Entry("www", 0o755), Entry("www/index.html", data=b"hi\n")]
    (d / "rootfs.tar").write_bytes(deterministic_tar(rootfs, 0))
    (d / "Containerfile").write_text(CONTAINERFILE)
    tag = f"localhost/mithril-test:{os.getpid()}"
    run(["podman", "import", d / "rootfs.tar", "localhost/mithril-test-base:1"])
    run(["podman", "build", "-q", *RUNC, "-t", tag, d])
    try:
        run(["podman", "save", "-q", "--format", "docker-archive", "-o", d / "docker.tar", tag])
        run(["podman", "save", "-q", "--format", "oci-archive", "-o", d / "oci.tar", tag])
        cid = run(["podman", "create", tag, "/bin/sh"]).text.strip()
        run(["podman", "export", "-o", d / "export.tar", cid])
        run(["podman", "rm", cid])
    finally:
        run(["podman", "rmi", "-f", tag, "localhost/mithril-test-base:1"], ok=range(256))
    return d


def exported(path: Path) -> dict:
    out = {}
    with tarfile.open(path) as tf:
        for m in tf:
            name = m.name.rstrip("/")
            if m.isdir():
                out[name] = ("dir",)
            elif m.issym():
                out[name] = ("symlink", m.linkname)
            elif m.islnk():
                out[name] = out[m.linkname]
            else:
                out[name] = ("file", hashlib.sha256(tf.extractfile(m).read()).hexdigest(), m.mode & 0o777)
    return out


def unpacked(root: Path) -> dict:
    out = {}
    for p in root.rglob("*"):
        name = p.relative_to(root).as_posix()
        if p.is_symlink():
            out[name] = ("symlink", os.readlink(p))
        elif p.is_dir():
            out[name] = ("dir",)
        else:
            out[name] = ("file", hashlib.sha256(p.read_bytes()).hexdigest(), os.stat(p).st_mode & 0o777)
    return out


@pytest.mark.parametrize("form", ["docker", "oci"])
def test_unpack_matches_podman_export(podman_image, form, tmp_path):
    image = unpack(podman_image / f"{form}.tar", tmp_path / "root")
    ours = unpacked(tmp_path / "root")
    ours.pop("tmp")  # a mount point we add (podman export lists dev, proc, sys, run too)
    assert ours == exported(podman_image / "export.tar")
    assert "www/index.html" not in ours and "data/gone" not in ours and ours["opq/two"][0] == "file"
    assert "opq/one" not in ours and ours["data/keep/c"][0] == "file"  # written through the /link symlink
    root = tmp_path / "root"
    assert os.stat(root / "hard1").st_ino == os.stat(root / "hard2").st_ino
    assert len(image.layers) == 3 and any(e.startswith("PATH=") for e in image.config.env)


def test_read_image_of_our_own_archives(podman_image):
    assert read_image(podman_image / "docker.tar").ref.startswith("localhost/mithril-test:")
