"""Page-blob upload end to end against Azurite (started here on 127.0.0.1)."""

from __future__ import annotations

import pytest

from pipeline.platforms.azure import upload as up
from pipeline.platforms.azure import vhd
from tests.azurite import azurite, page_blob_sas

MiB = vhd.MiB
# Data in a few places: unaligned starts and ends, one extent longer than a chunk, a zero block.
WRITES = [(0, b"\xeb\x3c\x90" + b"M" * 509), (3 * MiB + 100, b"a" * 5000), (20 * MiB, b"b" * (9 * MiB + 7)),
          (40 * MiB, bytes(MiB)), (63 * MiB + 512, b"z" * 1000)]


class Recording:
    """A BlobClient wrapper that records every page sent, and can fail after `fail_after` pages."""

    def __init__(self, blob, fail_after: int | None = None):
        self.blob, self.fail_after, self.sent = blob, fail_after, []

    def upload_page(self, page, offset, length):
        if self.fail_after is not None and len(self.sent) >= self.fail_after:
            raise KeyboardInterrupt  # the user pressed ^C / the process died
        self.blob.upload_page(page, offset=offset, length=length)
        self.sent.append((offset, length))

    def __getattr__(self, name):
        return getattr(self.blob, name)


@pytest.fixture(scope="module")
def endpoint(tmp_path_factory):
    with azurite(tmp_path_factory.mktemp("azurite")) as ep:
        yield ep


@pytest.fixture
def disk(tmp_path):
    path = tmp_path / "disk.raw"
    with open(path, "wb") as f:
        f.truncate(64 * MiB - 4096)  # not a 1 MiB multiple: padded to 64 MiB
        for off, data in WRITES:
            f.seek(off)
            f.write(data)
    return path


def _blob(endpoint, name, size, fail_after=None):
    return Recording(up.blob_client(page_blob_sas(endpoint, "disks", name, size)), fail_after)


def _expected(disk, size, footer):
    return disk.read_bytes().ljust(size, b"\0") + footer


def test_sparse_disk_arrives_identical(endpoint, disk):
    size, footer = vhd.disk_footer(disk, "11" * 32, 1704067200)
    blob = _blob(endpoint, "a.vhd", size + 512)
    stats = up.Uploader(blob, workers=3, backoff=0).upload(disk, size, footer, progress=False)
    assert blob.download_blob().readall() == _expected(disk, size, footer)
    extents = vhd.data_extents(disk)
    assert stats.bytes_sent <= stats.data_bytes + len(extents) * up.MAX_PAGE
    assert stats.bytes_sent < 12 * MiB  # the disk is 64 MiB; only data is sent
    assert max(n for _, n in blob.sent) <= up.MAX_PAGE
    assert all(o % 512 == 0 and n % 512 == 0 for o, n in blob.sent)
    assert blob.sent[-1] == (size, 512)  # footer last
    assert stats.skipped_zero >= MiB  # the explicit zero block at 40 MiB was not sent


def test_interrupted_upload_resumes_without_resending(endpoint, disk):
    size, footer = vhd.disk_footer(disk, "22" * 32, 1704067200)
    sas_blob = _blob(endpoint, "b.vhd", size + 512, fail_after=3)
    with pytest.raises(KeyboardInterrupt):
        up.Uploader(sas_blob, workers=1, backoff=0).upload(disk, size, footer, progress=False)
    first = set(sas_blob.sent)
    assert len(first) == 3
    again = Recording(sas_blob.blob)
    stats = up.Uploader(again, workers=2, backoff=0).upload(disk, size, footer, progress=False)
    assert not first & set(again.sent), "completed pages were sent again"
    assert stats.skipped_present == sum(n for _, n in first)
    assert again.blob.download_blob().readall() == _expected(disk, size, footer)
    # a third run finds everything in place and sends nothing
    third = Recording(sas_blob.blob)
    up.Uploader(third, backoff=0).upload(disk, size, footer, progress=False)
    assert third.sent == []


def test_stale_pages_are_replaced_and_cleared(endpoint, disk, tmp_path):
    size, footer = vhd.disk_footer(disk, "33" * 32, 1704067200)
    blob = _blob(endpoint, "c.vhd", size + 512)
    blob.blob.upload_page(b"\x07" * MiB, offset=10 * MiB, length=MiB)  # where the disk has a hole
    blob.blob.upload_page(b"\x07" * 4096, offset=20 * MiB, length=4096)  # where the disk has other data
    up.Uploader(blob, backoff=0).upload(disk, size, footer, progress=False)
    assert blob.download_blob().readall() == _expected(disk, size, footer)
