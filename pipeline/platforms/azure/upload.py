"""Upload a raw disk plus its VHD footer into a page blob (a managed disk's upload SAS).

Only data is sent: holes (SEEK_DATA/SEEK_HOLE) and all-zero chunks are skipped (a new upload
disk reads as zeros). Chunks are at most 4 MiB and 512-byte aligned, several are in flight, each
is retried with backoff on transient errors. Resume: pages the blob already holds are compared
with the disk and skipped when equal. The footer is written last, as the final 512-byte page.
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass
from pathlib import Path

from ... import log
from ...errors import ToolFailed
from .vhd import FOOTER_SIZE, data_extents

PAGE = 512
MAX_PAGE = 4 << 20  # Azure's limit for one Put Page; Azurite does not enforce it, so we do
RETRY_STATUS = {408, 429, 500, 502, 503, 504}


@dataclass
class UploadStats:
    data_bytes: int = 0        # bytes of the disk inside data extents
    bytes_sent: int = 0        # page bytes put on the wire (every attempt, retries included)
    pages_sent: int = 0
    skipped_zero: int = 0      # bytes skipped because the chunk was all zeros
    skipped_present: int = 0   # bytes the blob already held (resume)
    cleared: int = 0           # bytes cleared on the blob because the disk has zeros there
    retries: int = 0

    def as_dict(self) -> dict:
        return asdict(self)


def plan_chunks(extents: list[tuple[int, int]], size: int, chunk: int = MAX_PAGE) -> list[tuple[int, int]]:
    """512-aligned (offset, length) pieces of at most `chunk` bytes covering the extents within size."""
    if chunk % PAGE or not 0 < chunk <= MAX_PAGE:
        raise ValueError(f"chunk size {chunk} must be a multiple of 512 and at most {MAX_PAGE}")
    spans: list[list[int]] = []
    for off, length in sorted(extents):
        start, end = off // PAGE * PAGE, min(-(-(off + length) // PAGE) * PAGE, size)
        if start >= end:
            continue
        if spans and start <= spans[-1][1]:
            spans[-1][1] = max(spans[-1][1], end)
        else:
            spans.append([start, end])
    return [(o, min(chunk, end - o)) for start, end in spans for o in range(start, end, chunk)]


def _covered(ranges: list[tuple[int, int]], off: int, length: int) -> bool:
    """Is [off, off+length) inside the union of the (sorted, merged) half-open ranges?"""
    pos = off
    for s, e in ranges:
        if s <= pos < e:
            pos = e
            if pos >= off + length:
                return True
    return pos >= off + length


def _subtract(ranges: list[tuple[int, int]], cut: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out = []
    for s, e in ranges:
        pos = s
        for cs, ce in cut:
            if ce <= pos or cs >= e:
                continue
            if cs > pos:
                out.append((pos, cs))
            pos = max(pos, ce)
        if pos < e:
            out.append((pos, e))
    return out


def _merge(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[list[int]] = []
    for s, e in sorted(ranges):
        if out and s <= out[-1][1]:
            out[-1][1] = max(out[-1][1], e)
        else:
            out.append([s, e])
    return [(s, e) for s, e in out]


class Uploader:
    def __init__(self, blob, *, workers: int = 4, chunk: int = MAX_PAGE, attempts: int = 5,
                 backoff: float = 1.0, name: str = "disk"):
        self.blob, self.workers, self.chunk = blob, workers, chunk
        self.attempts, self.backoff, self.name = attempts, backoff, name
        self.stats = UploadStats()
        self._lock = threading.Lock()

    def _send(self, data: bytes, offset: int) -> None:
        """One Put Page, retried with exponential backoff on transient failures."""
        from azure.core.exceptions import (
            HttpResponseError,
            ServiceRequestError,
            ServiceResponseError,
        )

        n = len(data)
        # Never rely on the service to reject an oversized or unaligned page (Azurite accepts them).
        if not (0 < n <= MAX_PAGE and n % PAGE == 0 and offset % PAGE == 0):
            raise AssertionError(f"refusing to send page of {n} bytes at offset {offset}")
        for attempt in range(self.attempts):
            with self._lock:
                self.stats.bytes_sent += n
                self.stats.pages_sent += 1
            try:
                self.blob.upload_page(data, offset=offset, length=n)
                return
            except (ServiceRequestError, ServiceResponseError) as e:
                why = type(e).__name__
            except HttpResponseError as e:
                if e.status_code not in RETRY_STATUS:
                    code = getattr(e, "error_code", None)
                    code = getattr(code, "value", code) or e.reason or ""
                    hint = (" (write access was revoked or the SAS expired; run deploy again to resume)"
                            if e.status_code == 403 else "")
                    raise ToolFailed(f"upload of {self.name} failed at offset {offset}: HTTP {e.status_code} "
                                     f"{code}{hint}") from None
                why = f"HTTP {e.status_code}"
            if attempt + 1 == self.attempts:
                raise ToolFailed(f"upload of {self.name} failed at offset {offset} after {self.attempts} "
                                 f"attempts: {why}")
            with self._lock:
                self.stats.retries += 1
            time.sleep(self.backoff * 2 ** attempt)

    def _put(self, data: bytes, offset: int, present: bool) -> None:
        """Send a chunk unless the blob already holds exactly these bytes (resume)."""
        if present and self._matches(data, offset):
            with self._lock:
                self.stats.skipped_present += len(data)
            return
        self._send(data, offset)

    def _remote_ranges(self) -> list[tuple[int, int]]:
        ranges = [(r.start, r.end + 1) for r in self.blob.list_page_ranges() if not getattr(r, "cleared", False)]
        return _merge(ranges)

    def _matches(self, data: bytes, offset: int) -> bool:
        return self.blob.download_blob(offset=offset, length=len(data)).readall() == data

    def upload(self, disk: Path, size: int, footer: bytes, progress: bool = True) -> UploadStats:
        """Upload `disk` (padded with zeros to `size`) and then `footer` at offset `size`."""
        if len(footer) != FOOTER_SIZE or size % PAGE:
            raise ValueError("footer must be 512 bytes and size a multiple of 512")
        extents = data_extents(disk)
        chunks = plan_chunks(extents, size, self.chunk)
        self.stats.data_bytes = sum(length for _, length in extents)
        remote = self._remote_ranges()
        bar = log.progress(sum(n for _, n in chunks) + FOOTER_SIZE, f"upload {self.name}") if progress else None
        nonzero: list[tuple[int, int]] = []
        zero = bytes(self.chunk)
        pending: deque[Future] = deque()
        fd = os.open(disk, os.O_RDONLY)
        try:
            with ThreadPoolExecutor(self.workers, thread_name_prefix="upload") as pool:
                try:
                    for off, n in chunks:
                        data = os.pread(fd, n, off).ljust(n, b"\0")  # the last page may pass the file's end
                        if data == zero[:n]:
                            self.stats.skipped_zero += n
                            if bar:
                                bar.update(n)
                            continue
                        nonzero.append((off, off + n))
                        while len(pending) >= 2 * self.workers:
                            done, _ = wait(pending, return_when=FIRST_COMPLETED)
                            for f in done:
                                pending.remove(f)
                                f.result()
                        fut = pool.submit(self._put, data, off, _covered(remote, off, n))
                        if bar:
                            fut.add_done_callback(lambda f, n=n: f.cancelled() or f.exception() or bar.update(n))
                        pending.append(fut)
                    for f in list(pending):
                        f.result()
                except BaseException:
                    for f in pending:
                        f.cancel()
                    raise
            # Pages the blob holds where the disk has zeros or holes (an earlier, different upload).
            for s, e in _subtract([r for r in remote if r[0] < size], nonzero):
                e = min(e, size)
                self.blob.clear_page(offset=s, length=e - s)
                self.stats.cleared += e - s
            # The footer goes last: a blob with the right footer has had all its data written.
            if not (_covered(remote, size, FOOTER_SIZE) and self._matches(footer, size)):
                self._send(footer, size)
            if bar:
                bar.update(FOOTER_SIZE)
        finally:
            os.close(fd)
            if bar:
                bar.close()
        return self.stats


def blob_client(sas_url: str):
    """A BlobClient for an upload SAS URL; the SDK's own retries are off (ours apply)."""
    from azure.storage.blob import BlobClient

    from ...run import add_secret

    add_secret(sas_url)
    add_secret(sas_url.partition("?")[2])
    return BlobClient.from_blob_url(sas_url, retry_total=0)


def upload_disk(sas_url: str, disk: Path, size: int, footer: bytes, *, name: str, workers: int = 4,
                progress: bool = True) -> UploadStats:
    return Uploader(blob_client(sas_url), workers=workers, name=name).upload(disk, size, footer, progress)
