"""What mithril-build adds to the client's `verify` and `connect` (mithril_client.commands, the one
implementation, re-exported here): run records and the project's default measurements for
`connect`, PCRs from a quote for record-platform, `attest gpu`, and `run`'s probes."""

from __future__ import annotations

import json
import os
import re
import stat
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from mithril_client.commands import (  # noqa: F401 -- the one implementation, shared with `mithril-client`
    check_nonce, gpu_rims_for, load_snp_policy, online_arg, parse_hex, read_file, read_rims, report_json, rows_json,
    split_url, verify_evidence_file, verify_files)
from mithril_client.measurements import Row
from mithril_client.tpm2 import parse_pcr_file, parse_quote, pcr_digest

from .errors import BadInput

RUN_RECORDS = Path(".mithril") / "run"  # `mithril-build run` writes <profile>.json here


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
    base, path, host, port = split_url(url)
    record = _run_record(project, host, port)
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


PROFILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")  # a plain name: out/<profile>/, never a path


def _owned_by_me(path: Path, st: os.stat_result, what: str) -> None:
    """A run record decides which EK CA and which measurements `connect` trusts: only the user's
    own, unwritable by others, is read (`mithril-build run` makes the folder 0700, records 0600)."""
    fix = f"remove it; `mithril-build run` writes its {what} itself"
    if st.st_uid != os.getuid():
        raise BadInput(str(path), f"owned by uid {st.st_uid}, not by you (uid {os.getuid()}): not trusted", fix)
    if st.st_mode & 0o022:
        raise BadInput(str(path), f"mode {stat.S_IMODE(st.st_mode):04o} lets others write it: not trusted", fix)


def _read_record(path: Path) -> bytes:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as e:
        raise BadInput(str(path), f"cannot open the run record ({e.strerror}): not trusted",
                       "remove it; `mithril-build run` writes run records as plain files") from None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise BadInput(str(path), "not a regular file: not trusted", "remove it")
        _owned_by_me(path, st, "run records")
        return f.read(1 << 20)


def _run_record(project: Path | None, host: str, port: int) -> dict | None:
    root = _project_root(project)
    folder = root / RUN_RECORDS if root is not None else None
    if folder is None or not folder.is_dir():
        return None
    st = folder.lstat()
    if stat.S_ISLNK(st.st_mode):
        raise BadInput(str(folder), "is a symbolic link: not trusted", "remove it; `mithril-build run` makes it")
    _owned_by_me(folder, st, "run folder")
    for path in sorted(folder.glob("*.json")):
        raw = _read_record(path)
        try:
            rec = json.loads(raw)
            u = urllib.parse.urlsplit(rec["url"])
            if (u.hostname, u.port or 443) != (host, port) or not isinstance(rec.get("ek_ca"), str):
                continue
        except (ValueError, KeyError, TypeError, AttributeError, RecursionError):
            continue  # a stale or unreadable record (ours): not for this URL
        if not (isinstance(rec.get("profile"), str) and PROFILE_NAME.fullmatch(rec["profile"])):
            raise BadInput(str(path), f"profile: {rec.get('profile')!r} is not a plain profile name",
                           "remove the record; `mithril-build run` writes it")
        return rec
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


def silent_apps(ctx, url: str) -> list[str]:
    """What `run` says about the apps (appdisk.json's) that do not answer through the ingress at url."""
    out = ctx.out_dir
    try:
        apps = json.loads((out / "appdisk.json").read_text()).get("apps") or {"app": ctx.config.appdisk.app_port}
    except (OSError, ValueError):
        apps = {"app": ctx.config.appdisk.app_port}
    targets = {name: ("/" if name == "app" else f"/{name}/", port) for name, port in apps.items()}
    status = probe_apps(url, targets, wait=APP_WAIT)
    lines = [app_diagnosis(name, targets[name][0], targets[name][1], status[name], out / "run-serial.log",
                           ctx.profile_name.removesuffix("-debug"), ctx.profile.mode) for name in targets]
    return [x for x in lines if x]


APP_WAIT = 90  # seconds `run` gives the apps to answer once the attestation server does


def port_free(port: int) -> bool:
    import socket

    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def write_run_record(root: Path, profile: str, url: str, ek_ca: bytes, guests=()) -> Path:
    """Where `connect`, run in this project, finds the running server's trust anchors: a folder
    only the user can enter (0700), a record only the user can read and write (0600). `ek_ca` is
    the PEM bundle of every guest's EK CA (any replica behind `url` may answer); `guests` lists
    each guest's own forwarded URL, EK CA and QEMU pid."""
    from .files import atomic_write

    if not PROFILE_NAME.fullmatch(profile):
        raise BadInput("--profile", f"{profile!r} is not a plain profile name")
    folder = root / RUN_RECORDS
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(folder, 0o700)  # also an older folder made 0755
    _owned_by_me(folder, folder.lstat(), "run folder")
    path = folder / f"{profile}.json"
    record = {"url": url, "profile": profile, "ek_ca": ek_ca.decode(), "pid": os.getpid(),
              "guests": [{"url": g.url, "ek_ca": g.ek_ca.decode(), "pid": g.pid} for g in guests]}
    atomic_write(path, json.dumps(record, indent=1).encode() + b"\n", mode=0o600)
    return path


# ---------------------------------------------------------------------------- attest gpu

def parse_time(text: str | None, option: str = "--at"):
    """An ISO 8601 time (a date alone is midnight UTC; no zone means UTC), or None for now."""
    import datetime as dt

    if text is None:
        return None
    try:
        value = dt.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise BadInput(option, f"{text!r} is not an ISO 8601 time", "e.g. 2024-06-01 or 2024-06-01T12:00:00Z") from None
    return value if value.tzinfo else value.replace(tzinfo=dt.timezone.utc)


def verify_gpu_files(report: Path, cert_chain: Path, nonce: str, rims: Path | None, at: str | None,
                     driver_version: str | None = None, online=None) -> list[Row]:
    """`attest gpu`: one GPU's evidence in NVIDIA's sample formats, as their local verifier takes it."""
    from mithril_client.gpu.check import RimSet, check_gpu
    from mithril_client.gpu.spdm import NONCE_LEN, read_report_file

    gpu_nonce = parse_hex(nonce)  # an SPDM nonce, not a TPM one
    if len(gpu_nonce) != NONCE_LEN:
        raise BadInput("--nonce", f"{len(gpu_nonce)} bytes; an SPDM nonce has {NONCE_LEN}")
    raw = read_report_file(read_file(report, "--report"), str(report))
    return check_gpu(raw, read_file(cert_chain, "--cert-chain"), gpu_nonce, RimSet(tuple(read_rims(rims))),
                     now=parse_time(at), driver_version=driver_version, where=str(report), online=online)
