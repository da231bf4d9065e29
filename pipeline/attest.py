"""`attest verify`: read the quote files and check them with mithril_client.tpm2."""

from __future__ import annotations

from pathlib import Path

from .errors import BadInput
from mithril_client.measurements import load_measurements
from mithril_client.tpm2 import (
    QuoteReport,
    parse_pcr_file,
    parse_quote,
    pcr_digest,
    verify_quote,
)


def read_file(path: Path, option: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise BadInput(str(path), f"not found (given as {option})") from None
    except OSError as e:
        raise BadInput(str(path), f"cannot read ({option}): {e.strerror}") from None


def parse_nonce(text: str) -> bytes:
    try:
        nonce = bytes.fromhex(text.strip().removeprefix("0x"))
    except ValueError:
        raise BadInput("--nonce", f"{text!r} is not a hex string") from None
    if not 1 <= len(nonce) <= 64:
        raise BadInput("--nonce", f"{len(nonce)} bytes; a TPM nonce has 1 to 64 bytes")
    return nonce


def verify_files(quote: Path, signature: Path, pcrs: Path, ak_pub: Path, nonce: str, measurements: Path,
                 ca_pem: Path | None = None, allow_debug: bool = False) -> QuoteReport:
    m = load_measurements(measurements)
    nonce_bytes = parse_nonce(nonce)
    where = {"quote": str(quote), "signature": str(signature), "pcrs": str(pcrs), "ak": str(ak_pub)}
    return verify_quote(read_file(quote, "--quote"), read_file(signature, "--signature"),
                        read_file(pcrs, "--pcrs"), read_file(ak_pub, "--ak-pub"), nonce_bytes, m,
                        ca_pem=read_file(ca_pem, "--ca-pem") if ca_pem else None,
                        allow_debug=allow_debug, where=where)


def report_json(report: QuoteReport) -> dict:
    q = report.quote
    return {"ok": report.ok, "rows": [r.as_json() for r in report.rows],
            "quote": {"nonce": q.extra_data.hex(), "clock": q.clock, "reset_count": q.reset_count,
                      "restart_count": q.restart_count, "firmware_version": f"{q.firmware_version:016x}",
                      "pcrs": {s.bank: list(s.pcrs) for s in q.selections}}}


def pcrs_from_quote(quote: Path, pcrs: Path) -> dict[int, str]:
    """sha256 PCR values from a quote's PCR file, only those the quote's digest vouches for.
    (The signature is checked by `attest verify`; record-platform takes values a person obtained
    from a VM they trust to be the reference.)"""
    q = parse_quote(read_file(quote, "--from-quote"), str(quote))
    values = parse_pcr_file(read_file(pcrs, "--pcrs"), str(pcrs), q.selections)
    for hash_name in ("sha256", "sha384", "sha512", "sha1"):
        if pcr_digest(q.selections, values, hash_name) == q.pcr_digest:
            break
    else:
        raise BadInput(str(pcrs), "the PCR values do not match the quote's pcrDigest",
                       "pass the PCR file tpm2_quote wrote together with this quote")
    quoted = {i for s in q.selections if s.bank == "sha256" for i in s.pcrs}
    return {i: v.hex() for i, v in values.get("sha256", {}).items() if i in quoted}
