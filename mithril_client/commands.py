"""What `verify` and `connect` do, for both command lines (`mithril-client` and mithril-build's
`attest verify` / `connect`): read the files named on the command line, verify with this
package's library, and say the result as rows, JSON and text. No argument parsing here (each CLI
has its own) and nothing beyond the standard library and cryptography."""

from __future__ import annotations

import json
import sys
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from .errors import BadInput
from .evidence import parse_evidence
from .measurements import Row, format_table, load_measurements
from .quote import QuoteReport, verify_quote
from .tpm2 import check_nonce
from .verify import Report, Trust, verify_evidence

HTTP_ERROR = 22  # `connect`: attested, but an HTTP error status (curl --fail uses 22 too)


def read_file(path: Path, option: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise BadInput(str(path), f"not found (given as {option})") from None
    except OSError as e:
        raise BadInput(str(path), f"cannot read ({option}): {e.strerror}") from None


def parse_hex(text: str, option: str = "--nonce") -> bytes:
    """Hex from a command line (spaces and a 0x prefix allowed); the nonce rule is tpm2.check_nonce's."""
    try:
        return bytes.fromhex(text.strip().removeprefix("0x"))
    except ValueError:
        raise BadInput(option, f"{text!r} is not a hex string") from None


# ---------------------------------------------------------------------------- verify

def verify_files(quote: Path, signature: Path, pcrs: Path, ak_pub: Path, nonce: str, measurements: Path,
                 ca_pem: Path | None = None, allow_debug: bool = False) -> QuoteReport:
    m = load_measurements(measurements)
    nonce_bytes = check_nonce(parse_hex(nonce), "--nonce")
    where = {"quote": str(quote), "signature": str(signature), "pcrs": str(pcrs), "ak": str(ak_pub)}
    return verify_quote(read_file(quote, "--quote"), read_file(signature, "--signature"),
                        read_file(pcrs, "--pcrs"), read_file(ak_pub, "--ak-pub"), nonce_bytes, m,
                        ca_pem=read_file(ca_pem, "--ca-pem") if ca_pem else None,
                        allow_debug=allow_debug, where=where)


def verify_evidence_file(evidence: Path, nonce: str, measurements: Path, ek_ca: Path | None = None,
                         allow_debug: bool = False, snp_policy: Path | None = None, gpu_rims: Path | None = None,
                         online=None) -> Report:
    """An evidence document saved from GET /attestation. Offline, qemu's credential activation
    cannot run, so a qemu AK stays unverified here: `connect` does the round trip."""
    m = load_measurements(measurements)
    doc = parse_evidence(read_file(evidence, "--evidence"), str(evidence))
    trust = Trust(ek_roots=read_file(ek_ca, "--ek-ca") if ek_ca else None, allow_debug=allow_debug,
                  snp_policy=load_snp_policy(snp_policy), gpu_rims=gpu_rims_for(measurements, gpu_rims),
                  gpu_online=online)
    return verify_evidence(doc, check_nonce(parse_hex(nonce), "--nonce"), m, trust, raise_on_failure=False)  # the CLI prints every row


@dataclass(frozen=True)
class Verdict:
    """What `verify` prints: `data` on --json, else `text`; exit 0 when ok, else 1."""

    ok: bool
    data: dict
    text: str


def verify(evidence: Path | None, nonce: str, measurements: Path, *, quote=None, signature=None, pcrs=None,
           ak_pub=None, ca_pem=None, ek_ca=None, snp_policy=None, allow_debug=False, gpu_rims=None,
           online=None) -> Verdict:
    """An evidence document, or the four files of a quote (--quote --signature --pcrs --ak-pub)."""
    files = {"--quote": quote, "--signature": signature, "--pcrs": pcrs, "--ak-pub": ak_pub}
    if evidence is not None:
        if any(files.values()) or ca_pem:
            raise BadInput("--evidence", "give either --evidence or the quote files, not both")
        report = verify_evidence_file(evidence, nonce, measurements, ek_ca, allow_debug, snp_policy, gpu_rims, online)
        rows, ok, data = report.rows, report.ok, rows_json(report.rows, report.ok)
    else:
        if missing := [k for k, v in files.items() if v is None]:
            raise BadInput(", ".join(missing), "missing", "give --evidence, or all of --quote --signature --pcrs --ak-pub")
        if ek_ca or snp_policy or gpu_rims or online:
            raise BadInput("--ek-ca" if ek_ca else "--snp-policy" if snp_policy else "--gpu-rims/--online",
                           "only with --evidence")
        report = verify_files(quote, signature, pcrs, ak_pub, nonce, measurements, ca_pem, allow_debug)
        rows, ok, data = report.rows, report.ok, report_json(report)
    return Verdict(ok, data, format_table(rows) + "\n" + ("QUOTE VERIFIED" if ok else "QUOTE VERIFICATION FAILED"))


def load_snp_policy(path: Path | None):
    """--snp-policy FILE (JSON), or None for the defaults."""
    if path is None:
        return None
    from .platforms.azure_cvm import SnpPolicy

    try:
        doc = json.loads(read_file(path, "--snp-policy"))
    except (ValueError, RecursionError):
        raise BadInput(str(path), "not valid JSON (given as --snp-policy)") from None
    return SnpPolicy.from_json(doc, str(path))


def rows_json(rows: list[Row], ok: bool) -> dict:
    return {"ok": ok, "rows": [r.as_json() for r in rows]}


def report_json(report: QuoteReport) -> dict:
    q = report.quote
    return {"ok": report.ok, "rows": [r.as_json() for r in report.rows],
            "quote": {"nonce": q.extra_data.hex(), "clock": q.clock, "reset_count": q.reset_count,
                      "restart_count": q.restart_count, "firmware_version": f"{q.firmware_version:016x}",
                      "pcrs": {s.bank: list(s.pcrs) for s in q.selections}}}


# ---------------------------------------------------------------------------- GPU options

def read_rims(folder: Path | None, option: str = "--rims") -> list:
    """Every RIM (*.swidtag, *.xml) in a folder, parsed; anything there that is not a RIM is bad input."""
    from .gpu.check import load_rims

    if folder is None:
        return []
    if not Path(folder).is_dir():
        raise BadInput(str(folder), f"not a folder (given as {option})")
    files = {str(p): read_file(p, option) for p in sorted(Path(folder).iterdir())
             if p.is_file() and p.suffix in (".swidtag", ".xml")}
    return load_rims(files)


def gpu_rims_for(measurements: Path, extra: Path | None) -> tuple:
    """The RIMs a GPU profile is verified with: those the release ships next to its
    measurements.json (gpu-rims/, the driver RIM it names) and those of --gpu-rims (VBIOS RIMs)."""
    shipped = Path(measurements).parent / "gpu-rims"
    return tuple(read_rims(shipped if shipped.is_dir() else None, "gpu-rims/") + read_rims(extra, "--gpu-rims"))


def online_arg(enabled: bool, rim_service: str | None, ocsp_url: str | None):
    """--online [--rim-service URL] [--ocsp-url URL]: a gpu.online.Online, or None (offline)."""
    from .gpu.online import OCSP_URL, RIM_SERVICE, Online

    if not enabled:
        if rim_service or ocsp_url:
            raise BadInput("--rim-service" if rim_service else "--ocsp-url", "only with --online")
        return None
    for option, url in (("--rim-service", rim_service), ("--ocsp-url", ocsp_url)):
        if url is not None and not url.startswith(("https://", "http://")):
            raise BadInput(option, f"{url!r} is not an http(s) URL")
    return Online(rim_service=rim_service or RIM_SERVICE, ocsp_url=ocsp_url or OCSP_URL)


# ---------------------------------------------------------------------------- connect

def split_url(url: str) -> tuple[str, str, str, int]:
    """(https://host:port, path with the query string, host, port) of `connect URL`."""
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port or 443
    except ValueError as e:  # a bad port, an unclosed [IPv6 literal
        raise BadInput("URL", f"{url!r}: {e}", "e.g. https://127.0.0.1:8443/") from None
    if parts.scheme != "https" or not parts.hostname:
        raise BadInput("URL", f"{url!r} is not an https:// URL", "e.g. https://127.0.0.1:8443/")
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return f"https://{parts.netloc}", path, parts.hostname, port


def request_body(data: str | None) -> bytes | None:
    """-d/--data: the text itself, @FILE a file's bytes, @- standard input."""
    if data is None:
        return None
    if data == "@-":
        return sys.stdin.buffer.read()
    if data.startswith("@"):
        return read_file(Path(data[1:]), "--data @FILE")
    return data.encode()


def parse_headers(headers) -> dict[str, str]:
    out = {}
    for h in headers:
        name, sep, value = h.partition(":")
        if not sep or not name.strip():
            raise BadInput("--header", f"{h!r} is not NAME: VALUE")
        out[name.strip()] = value.strip()
    return out


@dataclass(frozen=True)
class Connected:
    """The outcome of `connect`: on --json print `data` on stdout; else `table` on stderr and
    `body` on stdout; then exit `exit_code` (0, 22 attested but HTTP >= 400, 1 refused)."""

    data: dict
    table: str
    body: bytes
    exit_code: int


def connect(base_url: str, path: str, measurements: Path, trust: Trust, method: str | None = None,
            body: bytes | None = None, headers: dict | None = None) -> Connected:
    """Attest the server at base_url on the TLS connection the request then travels over.
    Bad input raises BadInput (exit 2), an unreachable server session.Unreachable (exit 3)."""
    from .session import AttestationFailed, AttestedSession

    session = AttestedSession(base_url, measurements, trust=trust)
    try:
        resp = session.request(method or ("POST" if body is not None else "GET"), path, body=body,
                               headers=headers or {})
    except AttestationFailed as e:
        rows = e.report.all_rows
        return Connected({**rows_json(rows, False), "attested": False}, format_table(rows) + "\nATTESTATION FAILED: "
                         + str(e), b"", 1)
    finally:
        session.close()
    rows = session.report.all_rows
    data = {**rows_json(rows, True), "attested": True, "replica": resp.replica, "status": resp.status,
            "body": resp.body.decode("utf-8", errors="replace")}
    table = (format_table(rows) + f"\nATTESTED: {base_url} runs the measured image ({measurements}); "
             f"replica {resp.replica}; HTTP {resp.status}")
    if resp.status >= 400:
        return Connected(data, table + f"\nerror: the attested server answered HTTP {resp.status} (exit {HTTP_ERROR})",
                         resp.body, HTTP_ERROR)
    return Connected(data, table, resp.body, 0)
