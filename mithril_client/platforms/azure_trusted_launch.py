"""AK trust on an Azure Trusted Launch VM: the vTPM's AK certificate (NV 0x01C101D0) must chain
to Microsoft's Azure Virtual TPM Root Certificate Authority 2023 and carry the AK's public key.

Intermediates: the evidence's `ak_cert` may carry them after the AK certificate (PEM bundle);
otherwise the known "Global Virtual TPM CA" intermediates shipped in mithril_client/data/ are
used; otherwise, when a certificate names its issuer's URL in its Authority Information Access
extension (caIssuers), `fetch(url)` gets it. Nothing fetched is trusted on its own: every link
must verify up to the pinned root. AK certificates issued by "Global Virtual TPM CA - 01" carry
no AIA extension, hence the shipped copies.
"""

from __future__ import annotations

import urllib.request
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

Fetch = Callable[[str], bytes]


def http_fetch(url: str, timeout: float = 10.0) -> bytes:
    """GET an AIA caIssuers URL. Plain http is what Microsoft publishes there; integrity comes from
    the signature check against the pinned root, not from the transport."""
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"not an http(s) URL: {url}")
    with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 (scheme checked)
        data = response.read(FETCH_LIMIT + 1)
    if len(data) > FETCH_LIMIT:
        raise ValueError(f"{url}: more than {FETCH_LIMIT} bytes")
    return data


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
        except Exception as e:  # any failure of an injected or network fetcher is "not available"
            notes.append(f"fetching {url} failed: {e}")
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


def check_ak(evidence, ak_key, *, now: datetime | None = None, fetch: Fetch | None = None) -> list[Row]:
    """Rows for "is this AK certified by Azure's vTPM CA?"; the `ak` row is the verdict."""
    evidence = certs.evidence_arg(evidence)
    key = certs.ak_key_arg(ak_key)
    now = certs.now_arg(now)
    fetch = fetch or http_fetch
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
