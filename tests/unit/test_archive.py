import io
import json
import tarfile

import pytest

from pipeline.archive import Entry, deterministic_tar, validate_tar
from pipeline.errors import BadInput
from pipeline.oci import image_archive
from pipeline.run import run
from tests.conftest import need


def _tar(path, *members):
    with tarfile.open(path, "w") as tf:
        for m, data in members:
            tf.addfile(m, io.BytesIO(data) if data else None)
    return path


def _file(name, data=b"x"):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def _special(name, kind, link=""):
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, link
    return info, None


def test_good_tar_passes(tmp_path):
    p = _tar(tmp_path / "ok.tar", _file("a/b.txt"), _special("a/link", tarfile.SYMTYPE, "b.txt"))
    assert validate_tar(p) == 2


@pytest.mark.parametrize("member,msg", [
    (_file("../evil"), r"escapes the archive root"),
    (_file("a/../../evil"), r"escapes the archive root"),
    (_file("/etc/passwd"), r"absolute path"),
    (_special("dev/sda", tarfile.BLKTYPE), r"device file"),
    (_special("dev/tty", tarfile.CHRTYPE), r"device file"),
    (_special("fifo", tarfile.FIFOTYPE), r"FIFO"),
    (_special("a/link", tarfile.SYMTYPE, "/etc/shadow"), r"symlink escaping"),
    (_special("a/link", tarfile.SYMTYPE, "../../etc"), r"symlink escaping"),
    (_special("hard", tarfile.LNKTYPE, "../x"), r"escapes"),
])
def test_unsafe_tar_members_are_refused(tmp_path, member, msg):
    p = _tar(tmp_path / "bad.tar", _file("fine"), member)
    with pytest.raises(BadInput, match=msg):
        validate_tar(p, "images.x.archive")


def test_not_a_tar(tmp_path):
    p = tmp_path / "junk.tar"
    p.write_bytes(b"\x01" * 1000)
    with pytest.raises(BadInput, match="not a readable tar"):
        validate_tar(p)


def test_deterministic_tar_ignores_order_and_is_stable():
    a = [Entry("b", data=b"2"), Entry("a", 0o755), Entry("a/x", 0o755, b"1")]
    one = deterministic_tar(a, 1704067200)
    assert one == deterministic_tar(list(reversed(a)), 1704067200)
    assert one != deterministic_tar(a, 1704067201)
    with tarfile.open(fileobj=io.BytesIO(one)) as tf:
        names = [(m.name, m.uid, m.mtime) for m in tf]
    assert names == [("a", 0, 1704067200), ("a/x", 0, 1704067200), ("b", 0, 1704067200)]


def test_oci_archive_is_reproducible_and_readable_by_skopeo(tmp_path):
    rootfs = [Entry("bin", 0o755), Entry("bin/hello", 0o755, b"#!/bin/sh\necho hi\n")]
    a, digest = image_archive("localhost/t", "1", rootfs, entrypoint=["/bin/hello"], mtime=1704067200)
    b, digest2 = image_archive("localhost/t", "1", rootfs, entrypoint=["/bin/hello"], mtime=1704067200)
    assert a == b and digest == digest2
    with tarfile.open(fileobj=io.BytesIO(a)) as tf:
        index = json.load(tf.extractfile("index.json"))
    assert index["manifests"][0]["digest"] == digest
    need("skopeo")
    (tmp_path / "img.tar").write_bytes(a)
    out = json.loads(run(["skopeo", "inspect", f"oci-archive:{tmp_path / 'img.tar'}"]).stdout)
    assert out["Digest"] == digest and out["Architecture"] == "amd64"
