"""Azure IMDS's THIM endpoint: the VCEK certificate of this SEV-SNP host and its chain (ASK, ARK).

`GET http://169.254.169.254/metadata/THIM/amd/certification` with `Metadata: true` answers JSON
with `vcekCert` (PEM) and `certificateChain` (PEM: ASK then ARK), the format Azure's own
cvm-attestation-tools read (Azure/cvm-attestation-tools, cvm-attestation/src/imds_client.py).
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable

THIM_URL = "http://169.254.169.254/metadata/THIM/amd/certification"
TIMEOUT = 10.0
REFRESH = 6 * 3600.0  # seconds between background refreshes of the cached chain
MAX_ANSWER = 1 << 16  # three certificates are about 6 KiB
_PEM_CERT = "-----BEGIN CERTIFICATE-----"


class ImdsError(Exception):
    pass


def vcek_chain(url: str = THIM_URL) -> bytes:
    """VCEK, ASK, ARK as one PEM bundle."""
    request = urllib.request.Request(url, headers={"Metadata": "true"})
    # IMDS is link-local: never go through a proxy set in the environment
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=TIMEOUT) as response:
            body = response.read(MAX_ANSWER + 1)
    except (urllib.error.URLError, OSError) as e:
        raise ImdsError(f"THIM {url}: {e}") from None
    if len(body) > MAX_ANSWER:
        raise ImdsError(f"THIM {url}: answer larger than {MAX_ANSWER} bytes")
    try:
        doc = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ImdsError(f"THIM {url}: not JSON ({e})") from None
    parts = []
    for field in ("vcekCert", "certificateChain"):
        value = doc.get(field) if isinstance(doc, dict) else None
        if not isinstance(value, str) or _PEM_CERT not in value:
            raise ImdsError(f"THIM {url}: {field} is missing or not a PEM certificate")
        parts.append(value.strip() + "\n")
    return "".join(parts).encode()


def _background(work: Callable[[], None]) -> None:
    threading.Thread(target=work, name="vcek-refresh", daemon=True).start()


class VcekCache:
    """The VCEK chain for the TCB the SNP report names, fetched once per TCB. A request waits on
    IMDS only when nothing is cached for the report's TCB (at start, or after the host's TCB
    changed); otherwise the cached chain is served and, once it is older than `refresh` seconds,
    fetched again in the background (a failed refresh keeps the old chain). One fetch at a time:
    a flood of requests is one IMDS call, not one each."""

    def __init__(self, url: str = THIM_URL, fetch: Callable[[str], bytes] = vcek_chain, refresh: float = REFRESH,
                 clock: Callable[[], float] = time.monotonic, spawn: Callable = _background,
                 log: Callable[[str], None] = lambda message: None):
        self.url, self.fetch, self.refresh, self.clock, self.spawn, self.log = url, fetch, refresh, clock, spawn, log
        self._lock = threading.Lock()  # guards the fields below
        self._fetching = threading.Lock()  # one IMDS call at a time
        self._tcb: bytes | None = None
        self._chain: bytes | None = None
        self._at = 0.0
        self._refreshing = False

    def get(self, tcb: bytes) -> bytes:
        """The chain for `tcb` (the report's REPORTED_TCB bytes); ImdsError when none can be had."""
        with self._lock:
            if self._chain is not None and self._tcb == tcb:
                if self.clock() - self._at >= self.refresh and not self._refreshing:
                    self._refreshing = True
                    self.spawn(lambda: self._refresh(tcb))
                return self._chain
        with self._fetching:
            with self._lock:  # another request may have fetched it meanwhile
                if self._chain is not None and self._tcb == tcb:
                    return self._chain
            chain = self.fetch(self.url)
            with self._lock:
                self._tcb, self._chain, self._at = tcb, chain, self.clock()
            return chain

    def _refresh(self, tcb: bytes) -> None:
        try:
            with self._fetching:
                chain = self.fetch(self.url)
        except ImdsError as e:
            self.log(f"refreshing the VCEK chain: {e} (serving the cached one)")
            chain = None
        with self._lock:
            self._refreshing = False
            self._at = self.clock()  # success or not, the next attempt is one interval away
            if chain is not None and self._tcb == tcb:
                self._chain = chain
