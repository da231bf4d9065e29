"""Upload rules that need no blob service: the 4 MiB page limit, alignment, retries, errors."""

from __future__ import annotations

import pytest

from pipeline.platforms.azure import upload as up
from pipeline.errors import ToolFailed


def test_chunk_plan_is_aligned_and_bounded():
    chunks = up.plan_chunks([(100, 10), (3000, 9 << 20), (20 << 20, 1)], 32 << 20)
    assert chunks[0] == (0, 512)
    assert all(o % 512 == 0 and 0 < n <= up.MAX_PAGE and n % 512 == 0 for o, n in chunks)
    assert chunks[-1] == (20 << 20, 512)
    assert sum(n for _, n in chunks) == 512 + (((3000 + (9 << 20) + 511) // 512 * 512) - 2560) + 512


def test_oversized_page_is_refused_by_our_code():
    class Never:
        def upload_page(self, *a, **k):
            raise AssertionError("must not be reached")

    u = up.Uploader(Never())
    with pytest.raises(AssertionError, match="refusing"):
        u._send(bytes(up.MAX_PAGE + 512), 0)
    with pytest.raises(AssertionError, match="refusing"):
        u._send(bytes(1000), 0)
    with pytest.raises(ValueError):
        up.plan_chunks([(0, 100)], 512, chunk=up.MAX_PAGE + 512)


def test_transient_errors_are_retried_and_403_is_clear():
    from azure.core.exceptions import HttpResponseError

    class Flaky:
        def __init__(self, status, failures):
            self.status, self.failures, self.calls = status, failures, 0

        def upload_page(self, page, offset, length):
            self.calls += 1
            if self.calls <= self.failures:
                e = HttpResponseError(message="nope")
                e.status_code = self.status
                raise e

    flaky = Flaky(503, 2)
    u = up.Uploader(flaky, backoff=0)
    u._send(bytes(512), 0)
    assert flaky.calls == 3 and u.stats.retries == 2
    with pytest.raises(ToolFailed, match="HTTP 403.*revoked"):
        up.Uploader(Flaky(403, 1), backoff=0, name="os disk")._send(bytes(512), 0)
    with pytest.raises(ToolFailed, match="after 2 attempts"):
        up.Uploader(Flaky(500, 9), attempts=2, backoff=0)._send(bytes(512), 0)
