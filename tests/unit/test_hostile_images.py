"""Hostile image layers (issue 19, item 5): no whiteout, hard link, symlink, device or FIFO
touches anything outside the image's root; what cannot be applied inside it is refused with one
line naming the archive, the layer and the member (BadInput: exit 2), and no root is left behind.
Sentinels next to the root show that nothing outside was touched. Legitimate whiteouts follow
the OCI image-spec (layer.md, "Whiteouts"); tests/integration/test_oci_read.py compares whole
trees with podman's. Memory: a layer is read as a stream (a subprocess' peak RSS)."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import stat
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from pipeline.errors import BadInput
from pipeline.oci_read import check_archive, unpack
from tests.conftest import REPO, SEED, mb
from tests.unit.test_oci_read import docker_archive as oci_archive


def layer(*members: tuple) -> bytes:
    """A layer tar from (name, kind, payload): kind file|dir|sym|link|fifo|chr; payload data or target."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name, kind, payload in members:
            info = tarfile.TarInfo(name)
            info.mode = 0o755 if kind == "dir" else 0o644
            if kind == "file":
                info.size = len(payload)
                tf.addfile(info, io.BytesIO(payload))
                continue
            info.type = {"dir": tarfile.DIRTYPE, "sym": tarfile.SYMTYPE, "link": tarfile.LNKTYPE,
                         "fifo": tarfile.FIFOTYPE, "chr": tarfile.CHRTYPE}[kind]
            info.linkname = payload or ""
            tf.addfile(info)
    return buf.getvalue()


def docker_archive(path: Path, layers: list[bytes], diff_ids: list[str] | None = None) -> Path:
    return oci_archive(path, layers, diff_ids, {"Entrypoint": ["/x"], "ExposedPorts": {"80/tcp": {}}})


@pytest.fixture
def site(tmp_path):
    """tmp_path/root (not yet made) beside sentinels: a file, a folder with a file, their modes."""
    (tmp_path / "sentinel").write_bytes(b"keep")
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside/file").write_bytes(b"keep too")
    os.chmod(tmp_path / "outside", 0o750)
    return tmp_path


def untouched(site: Path) -> None:
    assert (site / "sentinel").read_bytes() == b"keep" and os.stat(site / "sentinel").st_nlink == 1
    assert (site / "outside/file").read_bytes() == b"keep too" and os.stat(site / "outside/file").st_nlink == 1
    assert stat.S_IMODE(os.stat(site / "outside").st_mode) == 0o750
    assert sorted(p.name for p in (site / "outside").iterdir()) == ["file"]


def refused(site: Path, layers: list[bytes], member: str, fault: str) -> str:
    """unpack refuses, in one line naming the archive, the layer (the last one) and the member;
    nothing outside the root changed and no root is left."""
    arc = docker_archive(site / "image.tar", layers)
    with pytest.raises(BadInput) as e:
        unpack(arc, site / "root")
    msg = str(e.value)
    assert "\n" not in msg and e.value.exit_code == 2, msg
    assert msg.startswith(f"{arc}: layer {len(layers) - 1}/layer.tar: ") and repr(member) in msg and fault in msg, msg
    untouched(site)
    assert not (site / "root").exists()
    return msg


# ------------------------------------------------------------------ refused

@pytest.mark.parametrize("name", [".wh...", "sub/.wh...", ".wh..", "sub/.wh..", ".wh.", "sub/.wh."])
def test_whiteout_of_dot_dot_dot_or_nothing(site, name):
    """`.wh...` removed the root's parent (rmtree(root/"..")), `.wh..` and `.wh.` the root."""
    base = layer(("sub", "dir", None), ("sub/f", "file", b"1"), ("f", "file", b"2"))
    refused(site, [base, layer((name, "file", b""))], name, "whiteout of")


def test_whiteout_as_a_folder(site):
    refused(site, [layer((".wh.x", "dir", None), (".wh.x/y", "file", b"1"))], ".wh.x/y", "below a whiteout")


@pytest.mark.parametrize("target", ["../sentinel", "../../sentinel", "/sentinel", "a/../../sentinel", "", "."])
def test_hard_link_outside_or_to_the_root(site, target):
    refused(site, [layer(("a", "dir", None), ("h", "link", target))], "h", "hard link")


@pytest.mark.parametrize("members", [
    [("h", "link", "missing")],
    [("d", "dir", None), ("h", "link", "d")],  # a folder
    [("d", "sym", None), ("h", "link", "d/file")],  # through a symlink to / inside the root: nothing there
    [("h", "link", "h")],
])
def test_hard_link_to_nothing_of_the_image(site, members):
    if members[0][0] == "d" and members[0][1] == "sym":
        members = [("d", "sym", str(site / "outside"))] + members[1:]
    refused(site, [layer(*members)], "h", "not a file of this image")


def test_file_below_a_file(site):
    """A member whose folder is a file in the image (crashed with NotADirectoryError)."""
    refused(site, [layer(("f", "file", b"1")), layer(("f/x", "file", b"2"))], "f/x", "/f is not a folder")


def test_symlink_loop_names_the_member(site):
    refused(site, [layer(("a", "sym", "b"), ("b", "sym", "a/c"), ("a/x", "file", b"1"))], "a/x",
            "too many levels of symbolic links")


@pytest.mark.parametrize("name", ["../x", "/x", "a/../../x"])
def test_names_outside_the_root(site, name):
    refused(site, [layer((name, "file", b"1"))], name, "")


def test_mount_point_that_is_a_file(site):
    arc = docker_archive(site / "image.tar", [layer(("tmp", "file", b"not a folder"))])
    with pytest.raises(BadInput, match="/tmp is not a folder in the image") as e:
        unpack(arc, site / "root")
    assert "\n" not in str(e.value) and not (site / "root").exists()


def test_init_refuses_a_hostile_layer_before_writing(site):
    """`init --image` reads every layer: exit 2, one line naming the layer and the member."""
    arc = docker_archive(site / "app.tar", [layer(("a", "file", b"1")), layer((".wh...", "file", b""))])
    res = mb("init", site / "p", "--image", arc, "--seed", SEED)
    assert res.returncode == 2, res.stderr
    lines = [x for x in res.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and "layer 1/layer.tar" in lines[0] and "'.wh...'" in lines[0], res.stderr
    assert not (site / "p").exists()
    untouched(site)


# ------------------------------------------------------------------ contained (resolved inside the root)

def test_hard_link_to_a_symlink_links_the_symlink(site):
    """A hard link names a symlink to a file outside: link(2) does not follow it (nor does
    `docker`'s or containerd's unpacking); the host's file was linked into the image before."""
    arc = docker_archive(site / "image.tar", [layer(("s", "sym", str(site / "sentinel")), ("h", "link", "s"))])
    unpack(arc, site / "root")
    untouched(site)
    h = site / "root/h"
    assert h.is_symlink() and os.readlink(h) == str(site / "sentinel") and os.lstat(h).st_nlink == 2


def test_mount_points_that_are_symlinks_stay_inside(site):
    """/tmp -> ../outside: chmod 1777 went to the folder beside the root; /proc -> a missing path
    crashed. (An absolute target here would start with tmp/: a loop inside the root, refused.)"""
    arc = docker_archive(site / "image.tar", [layer(("tmp", "sym", "../outside"), ("proc", "sym", "../nowhere/proc"))])
    unpack(arc, site / "root")
    untouched(site)
    assert stat.S_IMODE(os.stat(site / "root/outside").st_mode) == 0o1777 and (site / "root/tmp").is_symlink()
    assert (site / "root/nowhere/proc").is_dir() and not (site / "nowhere").exists()


@pytest.mark.parametrize("second", [
    [("d/.wh.file", "file", b"")], [("d/.wh..wh..opq", "file", b"")], [("d/new", "file", b"x")],
    [("d/sub/new", "file", b"x")], [("d", "dir", None), ("d/new", "file", b"x")],
    [("s", "file", b"over")], [("s/x", "file", b"x")], [(".wh.s", "file", b"")], [("s", "dir", None)],
    [("h", "link", "s")], [("s", "fifo", None)], [("s", "chr", None)],
])
def test_symlinks_to_outside_never_lead_out(site, second):
    """d -> the outside folder (absolute), s -> the sentinel file (relative, through `..`): a
    later layer writing, whiting out or linking through them acts inside the root, never outside."""
    first = layer(("d", "sym", str(site / "outside")), ("s", "sym", "../" * 12 + str(site / "sentinel").lstrip("/")))
    arc = docker_archive(site / "image.tar", [first, layer(*second)])
    unpack(arc, site / "root")
    untouched(site)


def test_fifos_and_devices_are_skipped(site):
    arc = docker_archive(site / "image.tar", [layer(("p", "file", b"1"), ("q", "file", b"1")),
                                              layer(("p", "fifo", None), ("q", "chr", None))])
    unpack(arc, site / "root")
    assert not os.path.lexists(site / "root/p") and not os.path.lexists(site / "root/q")


# ------------------------------------------------------------------ the spec's whiteouts

def tree(root: Path) -> dict:
    out = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        out[rel] = ("sym", os.readlink(p)) if p.is_symlink() else ("dir",) if p.is_dir() else ("file", p.read_bytes())
    for d in ("proc", "sys", "dev", "tmp", "run"):
        out.pop(d)
    return out


BASE = layer(("a", "dir", None), ("a/b", "dir", None), ("a/b/c", "dir", None), ("a/b/c/bar", "file", b"bar"))


@pytest.mark.parametrize("second", [
    layer(("a", "dir", None), ("a/.wh..wh..opq", "file", b""), ("a/b", "dir", None), ("a/b/c", "dir", None),
          ("a/b/c/foo", "file", b"foo")),
    layer(("a", "dir", None), ("a/b", "dir", None), ("a/b/c", "dir", None), ("a/b/c/foo", "file", b"foo"),
          ("a/.wh..wh..opq", "file", b"")),
], ids=["marker first", "marker last"])
def test_opaque_whiteout_wherever_it_stands(site, second):
    """layer.md, "Whiteouts": these two second layers are equivalent; `a/.wh..wh..opq` hides only
    the lower a/b/c/bar, "regardless of the ordering in which the whiteout file was encountered"."""
    unpack(docker_archive(site / "image.tar", [BASE, second]), site / "root")
    assert tree(site / "root") == {"a": ("dir",), "a/b": ("dir",), "a/b/c": ("dir",), "a/b/c/foo": ("file", b"foo")}


def test_explicit_whiteouts_and_links_to_lower_layers(site):
    """layer.md: `.wh.NAME` removes NAME (a file, or a folder with all below it) of a lower
    layer; a hard link may name a lower layer's file; the whiteout itself is never in the tree."""
    first = layer(("etc", "dir", None), ("etc/my-app-config", "file", b"1"), ("bin", "dir", None),
                  ("bin/tools", "dir", None), ("bin/tools/one", "file", b"2"), ("bin/app", "file", b"3"))
    second = layer(("etc/.wh.my-app-config", "file", b""), ("bin/.wh.tools", "file", b""), ("bin/app2", "link", "bin/app"),
                   ("etc/my-app.d", "dir", None), ("etc/my-app.d/default.cfg", "file", b"4"))
    unpack(docker_archive(site / "image.tar", [first, second]), site / "root")
    assert tree(site / "root") == {"bin": ("dir",), "bin/app": ("file", b"3"), "bin/app2": ("file", b"3"),
                                   "etc": ("dir",), "etc/my-app.d": ("dir",), "etc/my-app.d/default.cfg": ("file", b"4")}
    assert os.stat(site / "root/bin/app").st_ino == os.stat(site / "root/bin/app2").st_ino


# ------------------------------------------------------------------ memory

def gzip_layer_of_zeros(size: int) -> tuple[bytes, str]:
    """(gzip layer, diff_id): one file of `size` zero bytes. Each MiB is its own gzip member (one
    gzip stream may hold many, RFC 1952 2.2), compressed once: fast to make."""
    info = tarfile.TarInfo("big")
    info.size = size
    block = bytes(1 << 20)
    pieces = [info.tobuf(tarfile.PAX_FORMAT), bytes(size & ((1 << 20) - 1)), bytes(-size % 512 + 1024)]
    h = hashlib.sha256(pieces[0])
    for _ in range(size >> 20):
        h.update(block)
    for piece in pieces[1:]:
        h.update(piece)
    one = gzip.compress(block, 9, mtime=0)
    data = gzip.compress(pieces[0], mtime=0) + one * (size >> 20) + gzip.compress(b"".join(pieces[1:]), mtime=0)
    return data, "sha256:" + h.hexdigest()


def test_peak_memory_does_not_grow_with_the_layer(tmp_path):
    """A 256 MiB layer (256 KiB of gzip) is checked and unpacked by a child whose peak RSS stays
    far below the layer's size (it was inflated whole in memory: more than 512 MiB). The bound and
    its measure on 768 MiB: bench/bench_image_memory.py, bench/RESULTS.md."""
    data, diff_id = gzip_layer_of_zeros(256 << 20)
    arc = docker_archive(tmp_path / "big.tar", [data], diff_ids=[diff_id])
    code = ("import resource, sys; from pathlib import Path; from pipeline.oci_read import check_archive, unpack; "
            "check_archive(Path(sys.argv[1])); unpack(Path(sys.argv[1]), Path(sys.argv[2])); "
            "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)")
    baseline = ("import resource; import pipeline.oci_read, pipeline.run; "
                "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    peak = int(subprocess.run([sys.executable, "-c", code, arc, tmp_path / "root"], env=env, check=True,
                              capture_output=True, text=True).stdout) >> 10
    floor = int(subprocess.run([sys.executable, "-c", baseline], env=env, check=True, capture_output=True,
                               text=True).stdout) >> 10
    assert (tmp_path / "root/big").stat().st_size == 256 << 20
    print(f"peak RSS {peak} MiB, {floor} MiB after the imports alone")
    assert peak - floor < 32, f"peak RSS {peak} MiB, {floor} MiB after the imports alone"


@pytest.mark.parametrize("second", ["1/layer.tar", "2/layer.tar"])
def test_layer_missing_or_a_symlink_in_the_archive(site, second):
    """The manifest names a layer the archive holds as a symlink (docker's old format), or not at all."""
    data = layer(("f", "file", b"1"))
    diff_id = "sha256:" + hashlib.sha256(data).hexdigest()
    cfg = json.dumps({"config": {}, "rootfs": {"type": "layers", "diff_ids": [diff_id, diff_id]}}).encode()
    manifest = json.dumps([{"Config": "c.json", "Layers": ["0/layer.tar", second]}]).encode()
    with tarfile.open(site / "image.tar", "w") as tf:
        for name, body in (("c.json", cfg), ("manifest.json", manifest), ("0/layer.tar", data)):
            info = tarfile.TarInfo(name)
            info.size = len(body)
            tf.addfile(info, io.BytesIO(body))
        info = tarfile.TarInfo("1/layer.tar")
        info.type, info.linkname = tarfile.SYMTYPE, "../0/layer.tar"
        tf.addfile(info)
    with pytest.raises(BadInput, match=f"layer {second}: referenced but not in the archive"):
        unpack(site / "image.tar", site / "root")
    assert not (site / "root").exists()


def raw_layer(*infos: tarfile.TarInfo, fmt=tarfile.PAX_FORMAT) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tf:
        for info in infos:
            tf.addfile(info, io.BytesIO(bytes(info.size)) if info.isreg() else None)
    return buf.getvalue()


def named(name: str, **attrs) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    for k, v in attrs.items():
        setattr(info, k, v)
    return info


@pytest.mark.parametrize("data", [
    raw_layer(named("f", pax_headers={"comment": "x" * (1 << 20)})),  # held whole in memory by tarfile
    raw_layer(named("f" * 200_000), fmt=tarfile.GNU_FORMAT),  # a GNU long name of 200 kB
    raw_layer(named("s", type=tarfile.GNUTYPE_SPARSE), fmt=tarfile.GNU_FORMAT),
], ids=["pax header of 1 MiB", "long name of 200 kB", "sparse file"])
def test_headers_tarfile_would_hold_whole(site, data):
    arc = docker_archive(site / "image.tar", [gzip.compress(data)])
    for call in (lambda: unpack(arc, site / "root"), lambda: check_archive(arc)):
        with pytest.raises(BadInput, match=r"layer 0/layer.tar: not a readable tar: (extended header|sparse file)") as e:
            call()
        assert "\n" not in str(e.value)
    assert not (site / "root").exists()


def test_zstd_layers_stream_through_the_zstd_program(site):
    """A zstd layer (OCI media type tar+zstd) unpacks, and is checked like any other."""
    from pipeline.run import run

    good = layer(("d", "dir", None), ("d/f", "file", b"zstd"))
    bad = layer(("sub", "dir", None), ("sub/.wh...", "file", b""))
    z = [run(["zstd", "-q", "-c"], input=x).stdout for x in (good, bad)]
    ids = ["sha256:" + hashlib.sha256(x).hexdigest() for x in (good, bad)]
    unpack(docker_archive(site / "good.tar", [z[0]], ids[:1]), site / "root")
    assert (site / "root/d/f").read_bytes() == b"zstd"
    with pytest.raises(BadInput, match=r"layer 1/layer.tar: member 'sub/.wh...' is a whiteout of '..'"):
        unpack(docker_archive(site / "bad.tar", z, ids), site / "root2")
    with pytest.raises(BadInput, match=r"layer 0/layer.tar: (unreadable zstd data|not a readable tar)"):
        unpack(docker_archive(site / "broken.tar", [z[0][:-8]], ids[:1]), site / "root3")
    untouched(site)


@pytest.mark.parametrize("target", ["/{site}/outside/passwd", "../../../../../../{site}/outside/passwd"])
def test_user_names_resolve_in_the_image_not_on_the_host(site, target):
    """The image's User is looked up in its own /etc/passwd: a symlink there to a file outside (the
    build host's /etc/passwd, say) is resolved inside the root, where nothing names the user."""
    from pipeline.sandbox import identity

    (site / "outside/passwd").write_text("app:x:4242:4343::/:/bin/sh\n")
    arc = docker_archive(site / "image.tar", [layer(("etc", "dir", None),
                                                    ("etc/passwd", "sym", target.format(site=str(site).lstrip("/"))),
                                                    ("etc/group", "file", b"app:x:7:\n"))])
    unpack(arc, site / "root")
    with pytest.raises(BadInput, match="no user 'app' in the image's /etc/passwd"):
        identity(site / "root", "app", "image")
    who = identity(site / "root", "1:app", "image")
    assert (who.uid, who.gid) == (1, 7)


def test_an_outer_archive_of_too_many_members(site):
    """The archive's own index is capped (its headers are held): a gzip archive of a million empty
    files would otherwise fill memory before any check."""
    from pipeline.oci_read import MAX_MEMBERS

    arc = docker_archive(site / "image.tar", [layer(("f", "file", b"1"))])
    with tarfile.open(arc, "a") as tf:
        for i in range(MAX_MEMBERS):
            tf.addfile(tarfile.TarInfo(f"pad/{i}"), io.BytesIO())
    with pytest.raises(BadInput, match=f"more than {MAX_MEMBERS} members"):
        unpack(arc, site / "root")
