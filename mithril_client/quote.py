"""A TPM quote checked against measurements.json, as table rows: mode, signature, nonce, PCR
digest, then every PCR (PCR 15 with the served TLS CA's step replayed). Shared by `attest verify
--quote` (quote files) and verify.py (evidence documents)."""

from __future__ import annotations

import hmac
from dataclasses import dataclass

from .measurements import Measurements, Row, compare_pcrs
from .tpm2 import (PcrValues, Quote, Signature, check_nonce, load_ak, parse_pcr_file, parse_quote, parse_signature, pcr_digest,
                   signature_valid)


@dataclass(frozen=True)
class QuoteReport:
    quote: Quote
    rows: list[Row]

    @property
    def ok(self) -> bool:
        return not any(r.failed for r in self.rows)


def verify_quote(quote_bytes: bytes, sig_bytes: bytes, pcr_bytes: bytes, ak_bytes: bytes, nonce: bytes,
                 measurements: Measurements, *, ca_pem: bytes | None = None, allow_debug: bool = False,
                 where: dict[str, str] | None = None) -> QuoteReport:
    """A quote from files (`attest verify --quote …`). A bare AK key ties the quote to no TPM, so
    the `ak` row always fails here: evidence documents carry what ties the AK (verify.py)."""
    where = {"quote": "quote", "signature": "signature", "pcrs": "pcrs", "ak": "ak-pub", **(where or {})}
    quote = parse_quote(quote_bytes, where["quote"])
    sig = parse_signature(sig_bytes, where["signature"])
    key = load_ak(ak_bytes, where["ak"])
    values = parse_pcr_file(pcr_bytes, where["pcrs"], quote.selections)
    rows = quote_rows(quote, sig, key, values, nonce, measurements, ca_pem=ca_pem, allow_debug=allow_debug)
    rows.append(Row("ak", "AK tied to a genuine TPM", "a bare public key (nothing ties it to a TPM)", "enforce",
                    "UNVERIFIED (use --evidence with the server's evidence document)"))
    return QuoteReport(quote, rows)


def quote_rows(quote: Quote, sig: Signature, key, values: PcrValues, nonce: bytes, measurements: Measurements,
               *, ca_pem: bytes | None = None, allow_debug: bool = False) -> list[Row]:
    """Every check of a quote as a table row: mode, signature, nonce, PCR digest, then each PCR of
    measurements.json. Only PCR values covered by the signed digest are compared. The verifier's
    nonce (or, evidence v2, the binding that stands for it) must follow the nonce rule: a
    matching quote over a short one proves no freshness."""
    check_nonce(nonce, "nonce")
    rows = []
    if measurements.mode == "debug":
        rows.append(Row("mode", "production", "debug", "info" if allow_debug else "enforce",
                        "ok" if allow_debug else "REFUSED (pass --allow-debug to accept a debug image)"))
    else:
        rows.append(Row("mode", "production", measurements.mode, "enforce", "ok"))

    sig_ok = signature_valid(quote, sig, key)
    rows.append(Row("signature", f"{sig.scheme}/{sig.hash} by the AK", "valid" if sig_ok else "invalid",
                    "enforce", "ok" if sig_ok else "MISMATCH"))
    nonce_ok = hmac.compare_digest(quote.extra_data, nonce)
    rows.append(Row("nonce", nonce.hex(), quote.extra_data.hex(), "enforce", "ok" if nonce_ok else "MISMATCH"))

    computed = pcr_digest(quote.selections, values, sig.hash)
    digest_ok = computed is not None and hmac.compare_digest(computed, quote.pcr_digest)
    rows.append(Row("pcr digest", quote.pcr_digest.hex(), computed.hex() if computed else "values missing",
                    "enforce", "ok" if digest_ok else "MISMATCH"))

    quoted = {i for s in quote.selections if s.bank == "sha256" for i in s.pcrs}
    # values that the signed digest does not vouch for are never compared
    actual = {i: v.hex() for i, v in values.get("sha256", {}).items() if i in quoted and digest_ok}
    rows += compare_pcrs(measurements, actual, ca_pem)
    return rows
