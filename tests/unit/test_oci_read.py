"""Hostile and broken image archives: one BadInput naming the archive, nothing outside the root."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from pathlib import Path

import pytest

from pipeline.archive import Entry
from pipeline.errors import BadInput
from pipeline.oci import image_archive
from pipeline.oci_read import read_image, unpack


def layer(*members: tuple) -> bytes:
    """A layer tar from (name, kind, payload): kind file|dir|sym|link; payload data or target."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name, kind, payload in members:
            info = tarfile.TarInfo(name)
            if kind == "file":
                info.size = len(payload)
                tf.addfile(info, io.BytesIO(payload))
                continue
            info.type = {"dir": tarfile.DIRTYPE, "sym": tarfile.SYMTYPE, "link": tarfile.LNKTYPE}[kind]
            info.linkname = payload or ""
            tf.addfile(info)
    return buf.getvalue()


def docker_archive(path: Path, layers: list[bytes], diff_ids: list[str] | None = None,
                   config: dict | None = None) -> Path:
    """A docker-archive (as `docker save` writes it) of the layers; gzip layers get the diff_id of
    their uncompressed bytes."""
    def diff_id(x: bytes) -> str:
        return "sha256:" + hashlib.sha256(gzip.decompress(x) if x[:2] == b"\x1f\x8b" else x).hexdigest()
    config = {"architecture": "amd64", "os": "linux", "config": config or {"Entrypoint": ["/x"]},
              "rootfs": {"type": "layers", "diff_ids": diff_ids or [diff_id(x) for x in layers]}}
    cfg = json.dumps(config).encode()
    names = [f"{i}/layer.tar" for i in range(len(layers))]
    manifest = [{"Config": hashlib.sha256(cfg).hexdigest() + ".json", "RepoTags": ["t:1"], "Layers": names}]
    with tarfile.open(path, "w") as tf:
        for name, data in [(manifest[0]["Config"], cfg), ("manifest.json", json.dumps(manifest).encode()),
                           *zip(names, layers)]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


def one_line(e: BadInput, path: Path) -> str:
    msg = str(e)
    assert "\n" not in msg and str(path) in msg
    return msg


def test_symlinked_parent_stays_inside_the_root(tmp_path):
    outside = tmp_path / "outside"
    arc = docker_archive(tmp_path / "a.tar", [
        layer(("escape", "sym", "../../../../" + str(outside).lstrip("/")), ("abs", "sym", str(outside))),
        layer(("escape/x", "file", b"1"), ("abs/y", "file", b"2"))])
    unpack(arc, tmp_path / "root")
    assert not outside.exists()
    assert (tmp_path / "root" / str(outside).lstrip("/") / "x").read_bytes() == b"1"
    assert (tmp_path / "root" / str(outside).lstrip("/") / "y").read_bytes() == b"2"


@pytest.mark.parametrize("members", [[("../evil", "file", b"x")], [("/abs", "file", b"x")],
                                     [("a", "link", "../../etc/passwd")], [("a", "link", "missing")]])
def test_hostile_members_are_refused(tmp_path, members):
    arc = docker_archive(tmp_path / "a.tar", [layer(*members)])
    with pytest.raises(BadInput) as e:
        unpack(arc, tmp_path / "root")
    one_line(e.value, arc)
    assert not (tmp_path / "evil").exists()


def test_layer_not_matching_its_diff_id(tmp_path):
    arc = docker_archive(tmp_path / "a.tar", [layer(("f", "file", b"x"))], diff_ids=["sha256:" + "0" * 64])
    with pytest.raises(BadInput, match="diff_id"):
        read_image(arc)


def test_oci_blob_not_matching_its_name(tmp_path):
    data, _ = image_archive("x", "1", [Entry("f", data=b"hello")], entrypoint=["/f"], mtime=0)
    src = tarfile.open(fileobj=io.BytesIO(data))
    bad = tmp_path / "bad.tar"
    with tarfile.open(bad, "w") as out:
        for m in src:
            body = src.extractfile(m).read() if m.isfile() else None
            if body is not None and m.name.startswith("blobs/") and b"hello" in body:
                body = body.replace(b"hello", b"HELLO")
            if m.name == "manifest.json":
                continue  # OCI layout only
            out.addfile(m, io.BytesIO(body) if body is not None else None)
    with pytest.raises(BadInput, match="does not match its digest"):
        read_image(bad)


@pytest.mark.parametrize("content", [b"", b"not a tar at all" * 100, b"\x1f\x8b" + bytes(50)])
def test_not_an_archive(tmp_path, content):
    arc = tmp_path / "x.tar"
    arc.write_bytes(content)
    with pytest.raises(BadInput) as e:
        read_image(arc)
    one_line(e.value, arc)


def test_archive_without_manifest(tmp_path):
    arc = tmp_path / "x.tar"
    with tarfile.open(arc, "w") as tf:
        info = tarfile.TarInfo("hello")
        info.size = 2
        tf.addfile(info, io.BytesIO(b"hi"))
    with pytest.raises(BadInput, match="neither index.json"):
        read_image(arc)


def test_our_own_archive_reads_and_unpacks(tmp_path):
    data, _ = image_archive("localhost/x", "1", [Entry("bin", 0o755), Entry("bin/a", 0o755, b"#!")],
                            entrypoint=["/bin/a"], mtime=0, exposed_ports=[8000])
    (tmp_path / "i.tar").write_bytes(data)
    image = unpack(tmp_path / "i.tar", tmp_path / "root")
    assert image.ref == "localhost/x:1" and image.config.argv == ("/bin/a",)
    assert image.config.exposed_ports == (8000,)
    assert (tmp_path / "root/bin/a").read_bytes() == b"#!" and (tmp_path / "root/tmp").stat().st_mode & 0o1777 == 0o1777
