"""`attest verify` and `connect`: read quotes, evidence documents and run records, and check them
with the client SDK's library (mithril_client) — the one implementation of verification."""

from __future__ import annotations

import json
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from mithril_client.evidence import parse_evidence
from mithril_client.measurements import Row, load_measurements
from mithril_client.tpm2 import QuoteReport, parse_pcr_file, parse_quote, pcr_digest, verify_quote
from mithril_client.verify import Report, Trust, verify_evidence

from .errors import BadInput

RUN_RECORDS = Path(".mithril") / "run"  # `mithril-build run` writes <profile>.json here


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


def verify_evidence_file(evidence: Path, nonce: str, measurements: Path, ek_ca: Path | None = None,
                         allow_debug: bool = False, snp_policy: Path | None = None) -> Report:
    """An evidence document saved from GET /attestation. Offline, qemu's credential activation
    cannot run, so a qemu AK stays unverified here: `connect` does the round trip."""
    m = load_measurements(measurements)
    doc = parse_evidence(read_file(evidence, "--evidence"), str(evidence))
    trust = Trust(ek_roots=read_file(ek_ca, "--ek-ca") if ek_ca else None, allow_debug=allow_debug,
                  snp_policy=load_snp_policy(snp_policy))
    return verify_evidence(doc, parse_nonce(nonce), m, trust)


def load_snp_policy(path: Path | None):
    """--snp-policy FILE (JSON), or None for the defaults."""
    if path is None:
        return None
    from mithril_client.platforms.azure_cvm import SnpPolicy

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


# ---------------------------------------------------------------------------- connect

@dataclass(frozen=True)
class Target:
    base_url: str  # https://host:port
    path: str  # with the query string
    measurements: Path
    ek_ca: bytes | None


def resolve_target(url: str, measurements: Path | None, ek_ca: Path | None, project: Path | None) -> Target:
    """What `connect URL` talks to and trusts. Run in a project folder, a running `mithril-build run`
    is found by its URL (its run record names the profile's measurements and the swtpm EK CA);
    otherwise the default profile's out/<profile>/measurements.json."""
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port or 443
    except ValueError as e:  # a bad port, an unclosed [IPv6 literal
        raise BadInput("URL", f"{url!r}: {e}", "e.g. https://127.0.0.1:8443/") from None
    if parts.scheme != "https" or not parts.hostname:
        raise BadInput("URL", f"{url!r} is not an https:// URL", "e.g. https://127.0.0.1:8443/")
    base = f"https://{parts.netloc}"
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    record = _run_record(project, parts.hostname, port)
    root = _project_root(project)
    if measurements is None:
        if record is not None:
            measurements = root / "out" / record["profile"] / "measurements.json"
        elif root is not None:
            from . import CONFIG_FILE
            from . import config as cfg

            profile = cfg.load(root / CONFIG_FILE).default_profile
            measurements = root / "out" / profile / "measurements.json"
        else:
            raise BadInput("--measurements", "not given and no mithril project here or above",
                           "pass the measurements.json of the build you trust")
    ca = read_file(ek_ca, "--ek-ca") if ek_ca else (record["ek_ca"].encode() if record else None)
    return Target(base, path, Path(measurements), ca)


def _project_root(project: Path | None) -> Path | None:
    from .project import find_root

    try:
        return find_root(project)
    except BadInput:
        if project is not None:
            raise
        return None


def _run_record(project: Path | None, host: str, port: int) -> dict | None:
    root = _project_root(project)
    if root is None or not (root / RUN_RECORDS).is_dir():
        return None
    for path in sorted((root / RUN_RECORDS).glob("*.json")):
        try:
            rec = json.loads(path.read_text())
            u = urllib.parse.urlsplit(rec["url"])
            if (u.hostname, u.port or 443) == (host, port) and isinstance(rec.get("ek_ca"), str):
                return rec
        except (OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError):
            continue  # a stale or foreign file: not ours to trust
    return None


# ---------------------------------------------------------------------------- run

def evidence_endpoint_answers(url: str, timeout: float = 5.0) -> bool:
    """True once GET /attestation answers 200 with JSON on url (no trust implied: a readiness probe)."""
    import http.client
    import os
    import ssl

    parts = urllib.parse.urlsplit(url)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    conn = http.client.HTTPSConnection(parts.hostname, parts.port, timeout=timeout, context=ctx)
    try:
        conn.request("GET", f"/attestation?nonce={os.urandom(32).hex()}")
        resp = conn.getresponse()
        return resp.status == 200 and isinstance(json.loads(resp.read()), dict)
    except (OSError, ValueError, http.client.HTTPException):
        return False
    finally:
        conn.close()


def app_status(url: str, path: str = "/", timeout: float = 5.0) -> int | None:
    """The HTTP status the ingress gives for GET path (None: no answer at all). A liveness probe
    of the app behind Caddy, no trust implied: Caddy answers 502 when nothing listens on the
    app's port (the app crashed, is restarting, or listens elsewhere)."""
    import http.client
    import ssl

    parts = urllib.parse.urlsplit(url)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    conn = http.client.HTTPSConnection(parts.hostname, parts.port, timeout=timeout, context=ctx)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        resp.read()
        return resp.status
    except (OSError, http.client.HTTPException):
        return None
    finally:
        conn.close()


def probe_apps(url: str, targets: dict[str, tuple[str, int]], wait: float, sleep=None) -> dict[str, int | None]:
    """{name: last status} for each app {name: (path, port)}, polled until every one answers
    below 500 or `wait` seconds have passed (an app may start after the attestation server)."""
    import time

    sleep = sleep or time.sleep
    deadline = time.monotonic() + wait
    status: dict[str, int | None] = {}
    while True:
        status = {name: app_status(url, path) for name, (path, _) in targets.items()}
        if all(s is not None and s < 500 for s in status.values()) or time.monotonic() >= deadline:
            return status
        sleep(2)


def app_diagnosis(name: str, path: str, port: int, status: int | None, serial_log: Path, profile: str,
                  mode: str) -> str | None:
    """One paragraph on an app that does not answer, as far as the host can see; None if it does."""
    if status is not None and status < 500:
        return None
    seen = ("no answer from the ingress at all" if status is None else
            f"the ingress answers HTTP {status} for {path}" +
            (": nothing accepts connections on that port (the app exited, keeps restarting, or listens on "
             "another port)" if status == 502 else ""))
    kept = f"the serial log is kept in {serial_log} once the run stops"
    where = (f"{kept}: the debug console there shows `mithril-{name}.service` failing and why"
             if mode == "debug" else
             f"a production guest shows nothing of its services (no console, no login), so {kept} with the "
             f"boot only; build and run the debug profile (`mithril-build all --profile {profile}-debug`, then "
             f"`mithril-build run --profile {profile}-debug`), whose console shows `mithril-{name}.service` "
             "failing and why (e.g. status=203/EXEC: no such entrypoint)")
    return f"{name} does not answer on port {port}: {seen}; {where}"


def port_free(port: int) -> bool:
    import socket

    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def write_run_record(root: Path, profile: str, url: str, ek_ca: bytes) -> Path:
    """Where `connect`, run in this project, finds the running server's trust anchors."""
    import os

    from .files import atomic_write

    path = root / RUN_RECORDS / f"{profile}.json"
    atomic_write(path, json.dumps({"url": url, "profile": profile, "ek_ca": ek_ca.decode(), "pid": os.getpid()},
                                  indent=1).encode() + b"\n")
    return path
