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
from pipeline.run import run
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


# Layers as an image builder may write them, with whiteouts in every legitimate form (layer.md):
# an opaque marker after its same-layer siblings, explicit whiteouts of a file and of a folder, a
# folder replacing a file and a symlink, a file replacing a folder, a whiteout of a hard link's
# first name. Left out where runtimes differ: members below a lower layer's symlink (containerd
# resolves them inside the root, as we do; podman's overlay storage makes a folder in the upper
# layer that hides the symlink) and hard links to a lower layer's file (podman fails to load them:
# "may fail", layer.md says; containerd and we link them; tests/unit/test_hostile_images.py).
LAYERS = [
    [("a", "dir", None), ("a/b", "dir", None), ("a/b/c", "dir", None), ("a/b/c/bar", "file", b"bar"),
     ("etc", "dir", None), ("etc/cfg", "file", b"cfg"), ("etc/keep", "file", b"keep"),
     ("data", "dir", None), ("data/x", "dir", None), ("data/x/y", "file", b"y"), ("lnk", "sym", "data"),
     ("abs", "sym", "/data/x"), ("h1", "file", b"hard"), ("h2", "link", "h1"), ("replace", "dir", None),
     ("replace/child", "file", b"c"), ("f2d", "file", b"f"), ("sym2dir", "sym", "etc")],
    [("a", "dir", None), ("a/b", "dir", None), ("a/b/c", "dir", None), ("a/b/c/foo", "file", b"foo"),
     ("a/.wh..wh..opq", "file", b""), ("etc/.wh.cfg", "file", b""), (".wh.data", "file", b""),
     ("replace", "file", b"now a file"), ("f2d", "dir", None), ("f2d/inner", "file", b"i"),
     ("sym2dir", "dir", None), ("sym2dir/z", "file", b"z")],
    [("etc/cfg", "file", b"cfg again"), (".wh.h1", "file", b""), ("data", "dir", None), ("data/new", "file", b"n")],
]


def test_whiteouts_match_podman(tmp_path):
    """The same archive loaded by `podman load` and exported from a container gives the tree we unpack."""
    need("podman")
    from tests.unit.test_hostile_images import docker_archive, layer

    arc = docker_archive(tmp_path / "w.tar", [layer(*members) for members in LAYERS])
    ref = run(["podman", "load", "-q", "-i", arc]).text.strip().split(": ", 1)[1]  # "Loaded image: REF"
    try:
        cid = run(["podman", "create", ref, "/x"]).text.strip()
        run(["podman", "export", "-o", tmp_path / "export.tar", cid])
        run(["podman", "rm", cid])
    finally:
        run(["podman", "rmi", "-f", ref], ok=range(256))
    unpack(arc, tmp_path / "root")
    ours = unpacked(tmp_path / "root")
    theirs = exported(tmp_path / "export.tar")
    for d in ("tmp", "proc", "sys", "dev", "run"):  # mount points (podman export lists them too)
        ours.pop(d, None)
        theirs.pop(d, None)
    assert ours == theirs
    assert ours["a/b/c/foo"][0] == "file" and "a/b/c/bar" not in ours and "etc/cfg" in ours and "h1" not in ours
    root = tmp_path / "root"
    assert (root / "h2").read_bytes() == b"hard" and os.stat(root / "h2").st_nlink == 1
