"""Unpacking image archives, checked against podman: an image built by `podman build` with
deleted files, a replaced folder (opaque whiteout), a symlinked parent and a hard link, saved as
docker-archive and as oci-archive, unpacks to exactly the tree `podman export` gives."""

from __future__ import annotations

import hashlib
import os
import tarfile
from pathlib import Path

import pytest
from pipeline.oci_read import check_archive, read_image, unpack
from tests import podman
from tests.conftest import need

CONTAINERFILE = """FROM BASE
RUN ["/bin/busybox", "sh", "-c", "for a in mkdir rm ln echo; do /bin/busybox ln -s busybox /bin/$a; done; \\
mkdir -p /data/keep /data/gone /opq && echo a > /data/keep/a && echo b > /data/gone/b && ln -s /data/keep /link \\
&& echo x > /hard1 && ln /hard1 /hard2 && echo 1 > /opq/one"]
RUN ["/bin/sh", "-c", "rm -rf /data/gone /www/index.html && rm -rf /opq && mkdir /opq && echo 2 > /opq/two \\
&& echo c > /link/c"]
"""


@pytest.fixture(scope="module")
def podman_image(tmp_path_factory):
    need("podman")
    d = tmp_path_factory.mktemp("podman")
    podman.build(d, CONTAINERFILE)
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


@pytest.mark.parametrize("form", ["docker", "oci"])
def test_podman_archives_pass_the_check_every_archive_passes_before_a_disk(podman_image, form, tmp_path):
    """What `podman save` writes (both forms, also gzip-compressed) is accepted by check_archive."""
    import gzip

    assert len(check_archive(podman_image / f"{form}.tar")) == 1
    (tmp_path / "a.tar.gz").write_bytes(gzip.compress((podman_image / f"{form}.tar").read_bytes()))
    assert len(check_archive(tmp_path / "a.tar.gz", many=True)) == 1
