"""pipeline/images.py and the .deb reading in pipeline/archive.py, on packages made here with
`dpkg-deb --build` (the reference writer of the format): compressions, file kinds, modes,
hardlinks, shared paths, documentation, our source trees, pins and the cache key."""

from __future__ import annotations

import dataclasses
import io
import json
import os
import tarfile
from pathlib import Path

import pytest

from pipeline import images, project
from pipeline.archive import deb_data, tar_entries
from pipeline.errors import BadInput, ToolFailed
from pipeline.images import Recipe, assemble
from pipeline.run import SYSTEM_PATH, run
from tests.conftest import need, new_project

MTIME = 1704067200


def make_deb(tmp: Path, name: str, files: dict, compression: str = "xz") -> Path:
    """A real .deb built by dpkg-deb from {path: bytes | ("symlink", target) | ("hardlink", path)
    | (mode, bytes)}."""
    need("dpkg-deb")
    root = tmp / f"{name}-root"
    (root / "DEBIAN").mkdir(parents=True)
    (root / "DEBIAN/control").write_text(f"Package: {name}\nVersion: 1.0\nArchitecture: amd64\n"
                                         "Maintainer: t <t@example.org>\nDescription: test\n")
    for path, spec in files.items():
        p = root / path
        p.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(spec, tuple) and spec[0] == "symlink":
            p.symlink_to(spec[1])
        elif isinstance(spec, tuple) and spec[0] == "hardlink":
            os.link(root / spec[1], p)
        else:
            mode, data = spec if isinstance(spec, tuple) else (0o644, spec)
            p.write_bytes(data)
            os.chmod(p, mode)
    out = tmp / f"{name}.deb"
    run(["dpkg-deb", "--root-owner-group", f"-Z{compression}", "--build", root, out],
        extra_env={"PATH": SYSTEM_PATH, "SOURCE_DATE_EPOCH": str(MTIME)})
    return out


def layer_bytes(archive: bytes) -> bytes:
    """The single layer of an OCI archive, found through index.json and the manifest."""
    outer = tarfile.open(fileobj=io.BytesIO(archive))
    index = json.load(outer.extractfile("index.json"))
    manifest = json.load(outer.extractfile("blobs/sha256/" + index["manifests"][0]["digest"][7:]))
    return outer.extractfile("blobs/sha256/" + manifest["layers"][0]["digest"][7:]).read()


def layer(archive: bytes) -> tarfile.TarFile:
    return tarfile.open(fileobj=io.BytesIO(layer_bytes(archive)))


RECIPE = Recipe("t", packages=("a",), excludes=(), entrypoint=("/usr/bin/tool",))
FILES = {
    "usr/bin/tool": (0o755, b"#!/bin/sh\n"),
    "usr/bin/suid": (0o4755, b"suid"),
    "usr/lib/libx.so.1": ("symlink", "libx.so.1.2"),
    "usr/lib/libx.so.1.2": b"ELF",
    "lib64/ld.so": ("symlink", "/usr/lib/libx.so.1.2"),
    "usr/share/b": b"same bytes",
    "usr/share/a": ("hardlink", "usr/share/b"),
    "usr/share/doc/a/copyright": b"licence",
    "usr/share/doc/a/changelog.Debian.gz": b"log",
    "usr/share/man/man1/tool.1.gz": b"man",
}


@pytest.mark.parametrize("compression", ["xz", "gzip", "zstd"])
def test_deb_data_reads_every_compression(tmp_path, compression):
    if compression == "zstd":
        need("zstd")
    deb = make_deb(tmp_path, "a", FILES, compression)
    entries = {e.path: e for e in tar_entries(deb_data(deb), str(deb))}
    assert entries["usr/bin/tool"].data == b"#!/bin/sh\n" and entries["usr/bin/tool"].mode == 0o755
    assert entries["lib64/ld.so"].target == "/usr/lib/libx.so.1.2"
    linked = [e for e in entries.values() if e.link]
    assert len(linked) == 1 and linked[0].data == b"same bytes"


def test_image_from_debs(tmp_path):
    deb = make_deb(tmp_path, "a", FILES)
    data, digest = assemble(RECIPE, {"a": deb}, MTIME)
    assert assemble(RECIPE, {"a": deb}, MTIME) == (data, digest)
    members = {m.name: m for m in layer(data)}
    assert members["usr/bin/suid"].mode == 0o755  # setuid dropped
    assert members["usr/bin/tool"].mode == 0o755 and members["usr/lib/libx.so.1.2"].mode == 0o644
    assert members["lib64/ld.so"].issym() and members["lib64/ld.so"].linkname == "/usr/lib/libx.so.1.2"
    # One hardlink group: the first path in tar order holds the data, the other links to it.
    assert members["usr/share/a"].isfile() and members["usr/share/b"].islnk()
    assert members["usr/share/b"].linkname == "usr/share/a"
    assert "usr/share/doc/a/copyright" in members and "usr/share/doc/a/changelog.Debian.gz" not in members
    assert not [n for n in members if n.startswith("usr/share/man")]
    assert members["tmp"].mode == 0o1777 and members["etc/passwd"].isfile()
    assert {m.uid for m in members.values()} == {0} and {m.mtime for m in members.values()} == {MTIME}
    # GNU tar (the reference reader) unpacks it, hardlink included.
    root = tmp_path / "root"
    root.mkdir()
    tar = tmp_path / "layer.tar"
    tar.write_bytes(layer_bytes(data))
    run(["tar", "-xf", tar, "-C", root], extra_env={"PATH": SYSTEM_PATH})
    assert os.stat(root / "usr/share/a").st_ino == os.stat(root / "usr/share/b").st_ino


def test_shared_paths(tmp_path):
    a = make_deb(tmp_path, "a", {"usr/share/x": b"same", "usr/bin/a": b"a"})
    b = make_deb(tmp_path, "b", {"usr/share/x": b"same", "usr/bin/b": b"b"})
    c = make_deb(tmp_path, "c", {"usr/share/x": b"different"})
    data, _ = assemble(RECIPE, {"a": a, "b": b}, MTIME)  # identical copies are one file
    assert {"usr/share/x", "usr/bin/a", "usr/bin/b"} <= {m.name for m in layer(data)}
    with pytest.raises(BadInput, match=r"^image t: /usr/share/x is shipped by both a and c with different content"):
        assemble(RECIPE, {"a": a, "c": c}, MTIME)
    d = make_deb(tmp_path, "d", {"etc/passwd": b"mine\n"})
    with pytest.raises(BadInput, match="/etc/passwd is shipped by both d and mithril"):
        assemble(RECIPE, {"d": d}, MTIME)


def test_not_a_deb(tmp_path):
    bad = tmp_path / "x.deb"
    bad.write_bytes(b"junk")
    with pytest.raises(BadInput, match="not a Debian package"):
        deb_data(bad)


def test_source_trees(tmp_path, monkeypatch):
    src = tmp_path / "repo"
    (src / "pkg/__pycache__").mkdir(parents=True)
    (src / "pkg/__init__.py").write_text("X = 1\n")
    (src / "pkg/__pycache__/__init__.cpython-311.pyc").write_bytes(b"pyc")
    (src / "pkg/run.sh").write_text("#!/bin/sh\n")
    os.chmod(src / "pkg/run.sh", 0o700)
    monkeypatch.setattr(images, "package_dir", lambda name: src / name if (src / name).is_dir() else None)
    recipe = Recipe("t", packages=("a",), excludes=(), entrypoint=("/x",), trees=("pkg",))
    assert images.source_trees(recipe) == {"pkg": src / "pkg"}
    members = {m.name: m for m in layer(assemble(recipe, {}, MTIME)[0])}
    assert members["opt/mithril/pkg/__init__.py"].mode == 0o644 and members["opt/mithril/pkg/run.sh"].mode == 0o755
    assert not [n for n in members if "__pycache__" in n or n.endswith(".pyc")]
    (src / "pkg/link").symlink_to("/etc/passwd")
    with pytest.raises(BadInput, match="pkg/link: is a symlink"):
        assemble(recipe, {}, MTIME)
    # a package that is not installed stops the build, naming its distribution: never a smaller image
    with pytest.raises(ToolFailed, match=r"image t: Python package mithril_client not found \(pip install mithril-client\)"):
        images.source_trees(Recipe("t", packages=("a",), excludes=(), entrypoint=("/x",), trees=("mithril_client",)))


def test_the_packages_are_found_where_python_imports_them():
    import attestation_server
    import mithril_client

    assert images.package_dir("mithril_client") == Path(mithril_client.__file__).parent
    assert images.package_dir("attestation_server") == Path(attestation_server.__file__).parent
    assert images.package_dir("no_such_package_here") is None


@pytest.fixture
def ctx(tmp_path):
    p = new_project(tmp_path / "p")
    return lambda locked=False: project.context(p, None, None, tmp_path / "cache", locked)


def test_cache_key_follows_pins_and_sources(ctx, tmp_path, monkeypatch):
    src = tmp_path / "repo"
    (src / "mithril_client").mkdir(parents=True)
    (src / "mithril_client/__init__.py").write_text("A = 1\n")
    real = images.package_dir
    monkeypatch.setattr(images, "package_dir", lambda name: src / name if name == "mithril_client" else real(name))
    before = images.key_inputs(ctx())
    assert before["caddy"]["debs"]["caddy"]["version"].startswith("2.6.2")
    (src / "mithril_client/__init__.py").write_text("A = 2\n")
    after = images.key_inputs(ctx())
    assert after["attestation-server"]["sources"] != before["attestation-server"]["sources"]
    assert after["caddy"] == before["caddy"]


def test_locked_build_refuses_missing_pins(ctx):
    c = ctx(locked=True)
    lock = c.lock.model_copy(update={"debs": {"caddy": {}}})
    with pytest.raises(BadInput, match=r"debs.caddy: not pinned \(--locked\)"):
        images.pins(dataclasses.replace(c, lock=lock), images.RECIPES["caddy"])
    pins = c.lock.debs["attestation-server"]
    lock = c.lock.model_copy(update={"debs": {"attestation-server": {k: v for k, v in pins.items() if k != "python3"}}})
    with pytest.raises(BadInput, match="debs.attestation-server: does not pin python3"):
        images.pins(dataclasses.replace(c, lock=lock), images.RECIPES["attestation-server"])


def test_lock_rejects_bad_deb_pins(tmp_path):
    from pipeline import lock as lk

    (tmp_path / "mithril.lock").write_text("debs: {caddy: {caddy: {version: '1', sha256: abc, size: 1, url: u}}}")
    with pytest.raises(BadInput, match="debs.caddy.caddy.sha256: String should match pattern"):
        lk.load(tmp_path / "mithril.lock")
    (tmp_path / "mithril.lock").write_text(f"debs: {{caddy: {{caddy: {{version: '1', sha256: '{'0' * 64}', size: 1}}}}}}")
    with pytest.raises(BadInput, match="debs.caddy.caddy.url: Field required"):
        lk.load(tmp_path / "mithril.lock")
