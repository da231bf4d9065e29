"""Verify an evidence document: the quote (signature, nonce, PCR digest), every PCR of
measurements.json (PCR 15 with the served TLS CA replayed), and what ties the AK to genuine
hardware on the evidence's platform — one table of rows, shared by `attest verify --evidence`,
`connect` and the client SDK. Without a verified `ak` row the verdict is never "verified"."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, field

from cryptography.hazmat.primitives import serialization

from .evidence import Evidence
from .gpu.evidence import gpu_rows, quote_nonce, rename_binding_row
from .measurements import Measurements, Row
from .platforms import check_ak
from .tpm2 import load_ak, parse_public, parse_quote, parse_signature, quote_rows


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


def verify_evidence(evidence: Evidence, nonce: bytes, measurements: Measurements, trust: Trust = Trust(),
                    activate: Callable[[bytes, bytes], bytes] | None = None) -> Report:
    """`activate(credential_blob, secret) -> credential` performs qemu's credential activation
    round trip; without it a qemu AK cannot be tied (the `ak` row fails)."""
    quote = parse_quote(evidence.quote, "evidence: quote")
    sig = parse_signature(evidence.signature, "evidence: signature")
    ak = parse_public(evidence.ak_public, "evidence: ak_public")
    rows = [Row("platform", measurements.platform or "-", evidence.platform, "enforce",
                "ok" if evidence.platform == measurements.platform else "MISMATCH")]
    rows += rename_binding_row(quote_rows(quote, sig, ak.key, evidence.pcrs, quote_nonce(evidence, nonce), measurements,
                                          ca_pem=evidence.tls_ca, allow_debug=trust.allow_debug), evidence)
    if _spki(load_ak(evidence.ak_pub, "evidence: ak_pub")) != _spki(ak.key):
        rows.append(Row("ak_pub", "the key of ak_public", "a different key", "enforce", "MISMATCH"))
    rows += check_ak(evidence, ak, ek_roots=trust.ek_roots, now=trust.now, snp_policy=trust.snp_policy,
                     fetch=trust.fetch, activate=activate)
    rows += gpu_rows(evidence, nonce, measurements, trust.gpu_rims, trust.now, trust.gpu_online)
    return Report(rows, evidence)


def _spki(key) -> bytes:
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
