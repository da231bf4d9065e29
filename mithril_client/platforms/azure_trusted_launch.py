"""AK trust on an Azure Trusted Launch VM: the vTPM's AK certificate (NV 0x01C101D0) must chain
to Microsoft's Azure Virtual TPM Root Certificate Authority 2023 and carry the AK's public key.

Intermediates: the evidence's `ak_cert` may carry them after the AK certificate (PEM bundle);
otherwise the known "Global Virtual TPM CA" intermediates shipped in mithril_client/data/ are
used; otherwise, when a certificate names its issuer's URL in its Authority Information Access
extension (caIssuers), `fetch(url)` gets it. Nothing fetched is trusted on its own: every link
must verify up to the pinned root. AK certificates issued by "Global Virtual TPM CA - 01" carry
no AIA extension, hence the shipped copies.

The URLs come from the evidence, i.e. from whoever answers: at most MAX_FETCHES of them, all in
one time budget, and the default fetcher only speaks https to public addresses (never loopback,
private, link-local — the cloud's metadata service — or reserved ones). The verifier only gets
here when measurements.json trusts azure-trusted-launch (verify.py).
"""

from __future__ import annotations

import http.client
import ipaddress
import socket
import ssl
import time
import urllib.parse
from collections.abc import Callable
from datetime import datetime

from cryptography import x509

from ..measurements import Row
from .. import certs

ROOT = certs.data_cert("azure-vtpm-root-2023.pem",
                       "e6c596b17f8ffefba5c300f714cfb1260c6028704ecf7becc4ab5018efb00e95")
KNOWN_INTERMEDIATES = (
    certs.data_cert("azure-vtpm-global-ca-01.pem",
                    "a2daccd149cd2eadb82045d3cd24336699a0b2d4e50237a76448d107896cf8c7"),
    certs.data_cert("azure-vtpm-global-ca-03.pem",
                    "fd7c92dabce4dcec9feaa30f8b087ada0598413189182152b881f5564064a29c"),
)
TCG_KP_AIK_CERTIFICATE = x509.ObjectIdentifier("2.23.133.8.3")
MAX_DEPTH = 4  # AK ← intermediate(s) ← root; Azure uses one or two intermediates
FETCH_LIMIT = 64 * 1024
MAX_FETCHES = 4  # an Azure chain needs one intermediate at most; a 64 KiB certificate can list ~1,500 URLs
FETCH_BUDGET = 10.0  # seconds for every fetch of one verification together (a session's timeout caps it)

Fetch = Callable[[str], bytes]


class FetchRefused(Exception):
    """A URL that is not fetched (scheme, address, count or time)."""


def _address(host: str, port: int, allow_private: bool) -> str:
    """The address to connect to: every address `host` resolves to must be public (a name that
    resolves to one private address could be re-resolved to it)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as e:
        raise FetchRefused(f"{host}: {e}") from None
    addresses = [info[4][0] for info in infos]
    for address in addresses:
        ip = ipaddress.ip_address(address.split("%")[0])
        if not allow_private and (not ip.is_global or ip.is_multicast):
            raise FetchRefused(f"{host} is {address}, not a public address")
    return addresses[0]


def http_fetch(url: str, timeout: float = FETCH_BUDGET, *, allow_private: bool = False,
               allow_http: bool = False) -> bytes:
    """GET an AIA caIssuers URL: https to a public address only (`allow_private`, `allow_http`:
    for tests against a local server). The connection goes to the address that was checked.
    Integrity comes from the signature check against the pinned root, not from the transport."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "https" and not (allow_http and parts.scheme == "http"):
        raise FetchRefused(f"not an https URL: {url[:200]}")
    try:
        host, port = parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise FetchRefused(f"not a usable URL: {url[:200]}") from None
    if not host:
        raise FetchRefused(f"no host in {url[:200]}")
    address = _address(host, port, allow_private)
    deadline = time.monotonic() + timeout
    if parts.scheme == "https":
        conn = http.client.HTTPSConnection(host, port, timeout=timeout, context=ssl.create_default_context())
        raw = socket.create_connection((address, port), timeout)
        conn.sock = conn._context.wrap_socket(raw, server_hostname=host)  # noqa: SLF001 (the checked address)
    else:
        conn = http.client.HTTPConnection(host, port, timeout=timeout)
        conn.sock = socket.create_connection((address, port), timeout)
    try:
        conn.request("GET", parts.path + (f"?{parts.query}" if parts.query else "") or "/")
        response = conn.getresponse()
        if response.status != 200:
            raise FetchRefused(f"{url[:200]}: HTTP {response.status}")
        data = b""
        while len(data) <= FETCH_LIMIT and (chunk := response.read(16384)):
            if time.monotonic() > deadline:
                raise FetchRefused(f"{url[:200]}: slower than {timeout:.1f} s")
            data += chunk
    finally:
        conn.close()
    if len(data) > FETCH_LIMIT:
        raise FetchRefused(f"{url[:200]}: more than {FETCH_LIMIT} bytes")
    return data


class FetchBudget:
    """At most MAX_FETCHES calls, all within `seconds` of the first; `fetch(url, seconds_left)`."""

    def __init__(self, fetch: Callable[[str, float], bytes], seconds: float, clock=time.monotonic):
        self.fetch, self.clock = fetch, clock
        self.deadline = clock() + seconds
        self.used = 0

    def __call__(self, url: str) -> bytes:
        if self.used >= MAX_FETCHES:
            raise FetchRefused(f"not fetched: at most {MAX_FETCHES} AIA URLs per verification")
        left = self.deadline - self.clock()
        if left <= 0:
            raise FetchRefused("not fetched: the time for fetching issuers is used up")
        self.used += 1
        return self.fetch(url, left)


def aia_issuer_urls(cert: x509.Certificate) -> list[str]:
    try:
        aia = cert.extensions.get_extension_for_class(x509.AuthorityInformationAccess).value
    except x509.ExtensionNotFound:
        return []
    return [d.access_location.value for d in aia
            if d.access_method == x509.AuthorityInformationAccessOID.CA_ISSUERS
            and isinstance(d.access_location, x509.UniformResourceIdentifier)]


def _find_issuer(cert, pool, fetch: Fetch, notes: list[str]):
    for candidate in pool:
        if candidate.subject == cert.issuer and certs.issued_by(cert, candidate):
            return candidate
    for url in aia_issuer_urls(cert):
        try:
            fetched = certs.parse_cert_bytes(fetch(url))
        except FetchRefused as e:
            notes.append(str(e))
            if str(e).startswith("not fetched:"):
                break  # the budget is spent: the rest are not tried either
            continue
        except Exception as e:  # any failure of an injected or network fetcher is "not available"
            notes.append(f"fetching {url[:200]} failed: {e}")
            continue
        if fetched is None:
            notes.append(f"{url} did not serve a certificate")
        elif fetched.subject == cert.issuer and certs.issued_by(cert, fetched):
            return fetched
        else:
            notes.append(f"{url} served a certificate that did not issue {certs.cn(cert)}")
    return None


def verify_chain(leaf: x509.Certificate, extra: list[x509.Certificate], now: datetime,
                 fetch: Fetch) -> tuple[list[x509.Certificate] | None, str]:
    """The path leaf → … → ROOT, or None and why not."""
    problems = []
    if certs.is_ca(leaf):
        problems.append(f"{certs.cn(leaf)} is a CA certificate, not an AK certificate")
    try:
        eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        if TCG_KP_AIK_CERTIFICATE not in eku:
            problems.append(f"{certs.cn(leaf)} lacks the tcg-kp-AIKCertificate extended key usage")
    except x509.ExtensionNotFound:
        pass
    pool = [c for c in extra if c.subject != c.issuer] + list(KNOWN_INTERMEDIATES)
    path, cert, notes = [leaf], leaf, []
    for _ in range(MAX_DEPTH):
        if cert.issuer == ROOT.subject and certs.issued_by(cert, ROOT):
            path.append(ROOT)
            break
        issuer = _find_issuer(cert, pool, fetch, notes)
        if issuer is None:
            why = f"no issuer found for {certs.cn(cert)} (issuer {certs.cn(cert.issuer)})"
            return None, "; ".join([why, *notes])
        if not certs.is_ca(issuer):
            return None, f"{certs.cn(issuer)} is not a CA certificate"
        path.append(issuer)
        cert = issuer
    else:
        return None, f"no path to {certs.cn(ROOT)} within {MAX_DEPTH} certificates"
    problems += [p for c in path for p in (certs.validity_problem(c, now), certs.weak_signature(c)) if p]
    if problems:
        return None, "; ".join(problems)
    return path, " ← ".join(certs.cn(c) for c in path)


def check_ak(evidence, ak_key, *, now: datetime | None = None, fetch: Fetch | None = None,
             fetch_budget: float = FETCH_BUDGET, clock=time.monotonic) -> list[Row]:
    """Rows for "is this AK certified by Azure's vTPM CA?"; the `ak` row is the verdict. `fetch(url)`
    replaces the default fetcher (https, public addresses); either way at most MAX_FETCHES URLs
    are fetched, within `fetch_budget` seconds together."""
    evidence = certs.evidence_arg(evidence)
    key = certs.ak_key_arg(ak_key)
    now = certs.now_arg(now)
    injected = fetch
    fetch = FetchBudget((lambda url, left: injected(url)) if injected else http_fetch, fetch_budget, clock)
    anchor = f"{certs.cn(ROOT)} (sha256 {certs.fingerprint(ROOT)[:16]}…)"
    verdict = f"AK certified by {certs.cn(ROOT)}"
    if evidence.ak_cert is None:
        rows = [Row("ak cert chain", f"chain to {anchor}", "no ak_cert in the evidence", "enforce", "missing"),
                Row("ak cert key", certs.key_text(key), "no ak_cert in the evidence", "enforce", "missing")]
        return [Row("ak", verdict, "no AK certificate (NV 0x01C101D0)", "enforce", "MISMATCH"), *rows]

    leaf, *extra = certs.pem_bundle(evidence.ak_cert, "evidence: ak_cert")
    path, how = verify_chain(leaf, extra, now, fetch)
    key_ok = certs.spki(leaf.public_key()) == certs.spki(key)
    rows = [
        Row("ak cert chain", f"chain to {anchor} valid at {now:%Y-%m-%d %H:%M:%S}Z", how, "enforce",
            "ok" if path else "MISMATCH"),
        Row("ak cert key", certs.key_text(key), certs.key_text(leaf.public_key()), "enforce",
            "ok" if key_ok else "MISMATCH"),
    ]
    if path and key_ok:
        actual = f"{certs.cn(leaf)} via {' ← '.join(certs.cn(c) for c in path[1:-1]) or 'no intermediate'}"
        return [Row("ak", verdict, actual, "enforce", "ok"), *rows]
    failed = ", ".join(r.check for r in rows if r.failed)
    return [Row("ak", verdict, f"not certified ({failed} failed)", "enforce", "MISMATCH"), *rows]


def validate(evidence, ak, inputs) -> list[Row]:
    """The registry's entry (choose.check_ak): `ak` a TpmPublic, `inputs` a choose.AkInputs."""
    budget = FETCH_BUDGET if inputs.fetch_budget is None else inputs.fetch_budget
    return check_ak(evidence, ak.key, now=inputs.now, fetch=inputs.fetch, fetch_budget=budget)
