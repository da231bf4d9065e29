"""Verify an evidence document: the quote (signature, nonce, PCR digest), every PCR of
measurements.json (PCR 15 with the served TLS CA replayed), and what ties the AK to genuine
hardware on the evidence's platform — one table of rows, shared by `attest verify --evidence`,
`connect` and the client SDK. Without a verified `ak` row the verdict is never "verified"."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, field

from cryptography.hazmat.primitives import serialization

from .errors import VerificationFailed
from .evidence import Evidence
from .gpu.evidence import gpu_rows, quote_nonce, rename_binding_row
from .measurements import Measurements, Row
from .platforms.choose import check_ak
from .quote import quote_rows
from .tpm2 import TLS_PCR, check_nonce, load_ak, parse_public, parse_quote, parse_signature


@dataclass(frozen=True)
class Trust:
    """What the verifier trusts beyond measurements.json."""

    ek_roots: bytes | None = None  # qemu: PEM bundle of the per-boot swtpm EK CA
    allow_debug: bool = False  # accept a debug-mode measurements file
    now: dt.datetime | None = None  # certificate validity is checked at this time (default: now)
    snp_policy: object | None = None  # azure-cvm: platforms.azure_cvm.SnpPolicy (default: its defaults)
    fetch: Callable[[str], bytes] | None = None  # azure: how to fetch an AIA issuer certificate
    gpu_rims: tuple = ()  # GPU profiles: parsed NVIDIA RIMs (gpu.rim.Rim): the release's driver RIM, VBIOS RIMs
    gpu_online: object | None = None  # gpu.online.Online: fetch missing RIMs, check OCSP (default: offline)
    fetch_budget: float = 10.0  # azure: seconds for every AIA fetch together (a session: at most its timeout)


@dataclass
class Report:
    rows: list[Row]
    evidence: Evidence
    extra: list[Row] = field(default_factory=list)  # e.g. the TLS row a session adds

    @property
    def all_rows(self) -> list[Row]:
        return self.rows + self.extra

    @property
    def ok(self) -> bool:
        rows = self.all_rows
        return not any(r.failed for r in rows) and any(r.check == "ak" and r.result == "ok" for r in rows)


class AttestationFailed(VerificationFailed):
    """The server's evidence did not verify (exit 1); `report` holds every row."""

    def __init__(self, report: Report, why: str = ""):
        self.report = report
        failed = [r.check for r in report.all_rows if r.failed] or ["ak"]
        super().__init__(why or f"attestation failed: {', '.join(failed)}")


def verify_evidence(evidence: Evidence, nonce: bytes, measurements: Measurements, trust: Trust = Trust(),
                    activate: Callable[[bytes, bytes], bytes] | None = None, *,
                    raise_on_failure: bool = True) -> Report:
    """The report of every check; raises AttestationFailed (with the report on it) unless the
    evidence verified. `raise_on_failure=False` returns a failed report too (for a table of rows);
    then `report.ok` is the verdict. `activate(credential_blob, secret) -> credential` performs
    qemu's credential activation round trip; without it a qemu AK cannot be tied (the `ak` row fails)."""
    check_nonce(nonce, "nonce")  # v2's quote carries a digest of it: checked here, not only in quote_rows
    quote = parse_quote(evidence.quote, "evidence: quote")
    sig = parse_signature(evidence.signature, "evidence: signature")
    ak = parse_public(evidence.ak_public, "evidence: ak_public")
    rows = [Row("platform", measurements.platform or "-", evidence.platform, "enforce",
                "ok" if evidence.platform == measurements.platform else "MISMATCH")]
    rows += rename_binding_row(quote_rows(quote, sig, ak.key, evidence.pcrs, quote_nonce(evidence, nonce), measurements,
                                          ca_pem=evidence.tls_ca, allow_debug=trust.allow_debug), evidence)
    rows.append(binding_row(measurements, rows))
    if _spki(load_ak(evidence.ak_pub, "evidence: ak_pub")) != _spki(ak.key):
        rows.append(Row("ak_pub", "the key of ak_public", "a different key", "enforce", "MISMATCH"))
    if evidence.platform == measurements.platform:
        rows += check_ak(evidence, ak, ek_roots=trust.ek_roots, now=trust.now, snp_policy=trust.snp_policy,
                         fetch=trust.fetch, fetch_budget=trust.fetch_budget, activate=activate)
    else:  # nothing is fetched or tried for a platform the client was not asked to trust
        rows.append(Row("ak", f"AK tied to a genuine TPM on {measurements.platform or '-'}",
                        f"not checked: the evidence is from {evidence.platform}", "enforce", "MISMATCH"))
    rows += gpu_rows(evidence, nonce, measurements, trust.gpu_rims, trust.now, trust.gpu_online)
    report = Report(rows, evidence)
    if raise_on_failure and not report.ok:
        raise AttestationFailed(report)
    return report


def binding_row(measurements: Measurements, rows: list[Row]) -> Row:
    """The served TLS CA must be the one the image measured (PCR 15 matched with the CA step
    replayed), whatever measurements.json says: without it a relay could present its own CA
    alongside a genuine quote. Not a policy a file can relax (docs/attestation.md)."""
    expected = f"PCR {TLS_PCR} enforced and matched with sha256(tls_ca) replayed"
    entry = measurements.pcrs.get(TLS_PCR)
    pcr = next((r for r in rows if r.check == f"PCR {TLS_PCR}"), None)
    if entry is None:
        actual = f"measurements.json lists no PCR {TLS_PCR}: the TLS CA is not bound to the image"
    elif entry[1] != "enforce":
        actual = f"measurements.json sets PCR {TLS_PCR} to {entry[1]!r}: the binding cannot be optional"
    elif pcr is None or pcr.result != "ok":
        actual = f"PCR {TLS_PCR} {pcr.result if pcr else 'missing'}: tls_ca is not the CA the image measured"
    else:
        return Row("tls binding", expected, "tls_ca is the CA the image measured", "enforce", "ok")
    return Row("tls binding", expected, actual, "enforce", "MISMATCH")


def _spki(key) -> bytes:
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
