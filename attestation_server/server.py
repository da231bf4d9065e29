"""The attestation server (docs/evidence.md): at start, the TLS CA measured into PCR 15 and the
ingress's certificate; then `GET /attestation?nonce=HEX` (quote + AK-trust evidence) and
`POST /attestation/activate` (credential activation, where the platform serves it). What differs
per platform is its Issuer (platforms/<module>.py).

Runs on Debian bookworm's python3 with python3-cryptography 38 and nothing else.
"""

from __future__ import annotations

import base64
import binascii
import json
import sys
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from mithril_client import tpm2
from mithril_client.errors import BadInput
from mithril_client.evidence import VERSION, parse_nonce
from mithril_client.gpu.binding import binding, derive_gpu_nonce
from mithril_client.platforms import NAMES as PLATFORMS

from . import imds, nvml, platforms, tls
from .platforms.base import b64 as _b64
from .tpm import ALG_SHA256, Key, Tpm, TpmError

QUOTED_PCRS = range(16)
QUOTE_ATTEMPTS = 3  # a PCR may move between TPM2_Quote and TPM2_PCR_Read: then quote again
MAX_BODY = 1 << 16  # an activation body is about 1 KiB
REQUEST_TIMEOUT = 30.0  # seconds a client may take to send its request


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Config:
    platform: str
    tpm: str
    tls_dir: Path
    state_dir: Path
    tls_owner: tuple[int, int] | None = None
    pcr: int = tpm2.TLS_PCR
    thim_url: str = imds.THIM_URL
    nvml: str | None = None  # GPU profiles: libnvidia-ml from the measured root; every answer then carries GPU evidence

    def __post_init__(self):
        if self.platform not in PLATFORMS:
            raise ValueError(f"platform {self.platform!r} is not one of {', '.join(PLATFORMS)}")
        if not 0 <= self.pcr <= 23:
            raise ValueError(f"PCR {self.pcr}: expected 0..23")


class StartError(Exception):
    pass


# ---------------------------------------------------------------------------- start

def _load_or_make_ca(state: Path):
    key_path, cert_path = state / "ca.key", state / "ca.pem"
    if key_path.exists() and cert_path.exists():
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        return key, x509.load_pem_x509_certificate(cert_path.read_bytes()), cert_path.read_bytes()
    key, cert = tls.make_ca()
    tls.write_atomic(key_path, tls.key_pem(key), mode=0o600)
    tls.write_atomic(cert_path, tls.cert_pem(cert))
    return key, cert, tls.cert_pem(cert)


def _measure_ca(cfg: Config, ca_pem: bytes) -> None:
    """Extend PCR `cfg.pcr` with sha256(CA PEM) exactly once per boot. The state folder records
    the value before and the value after; the record is written before extending, so a restart
    at any point can tell whether the extend happened."""
    digest = tpm2.ca_digest(ca_pem)
    record_path = cfg.state_dir / "pcr.json"
    with Tpm(cfg.tpm) as tpm:
        current = tpm.pcr_read(ALG_SHA256, [cfg.pcr])[cfg.pcr]
        if record_path.exists():
            record = json.loads(record_path.read_text())
        else:
            record = {"pcr": cfg.pcr, "ca_sha256": digest.hex(), "before": current.hex(),
                      "after": tpm2.extend(current, digest).hex()}
            tls.write_atomic(record_path, json.dumps(record).encode())
        if record["pcr"] != cfg.pcr or record["ca_sha256"] != digest.hex():
            raise StartError(f"{record_path} is for PCR {record['pcr']} and CA sha256 {record['ca_sha256']}, "
                             f"not PCR {cfg.pcr} and this CA ({digest.hex()}): empty the state folder")
        if current.hex() == record["after"]:
            log(f"PCR {cfg.pcr} already holds this CA: not extended again")
        elif current.hex() == record["before"]:
            tpm.pcr_extend(cfg.pcr, ALG_SHA256, digest)
            log(f"PCR {cfg.pcr} extended with sha256(CA PEM) {digest.hex()}")
        else:
            raise StartError(f"PCR {cfg.pcr} is {current.hex()}, neither the value before ({record['before']}) "
                             f"nor after ({record['after']}) the CA's extend: something else extended it")


def start(cfg: Config) -> bytes:
    """Make or reuse the CA, measure it, write the ingress's files; returns the CA PEM."""
    cfg.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    cfg.tls_dir.mkdir(mode=0o755, parents=True, exist_ok=True)
    ca_key, ca_cert, ca_pem = _load_or_make_ca(cfg.state_dir)
    _measure_ca(cfg, ca_pem)
    leaf_key, leaf_cert = tls.issue_leaf(ca_key, ca_cert)
    tls.write_atomic(cfg.tls_dir / "server.key", tls.key_pem(leaf_key), mode=0o600, owner=cfg.tls_owner)
    tls.write_atomic(cfg.tls_dir / "server.pem", tls.cert_pem(leaf_cert) + ca_pem)
    tls.write_atomic(cfg.tls_dir / "ca.pem", ca_pem)
    return ca_pem


# ---------------------------------------------------------------------------- requests

def _body_tpm2b(doc: dict, key: str) -> bytes:
    """A base64 TPM2B from the activation body; returns its contents."""
    value = doc.get(key)
    if not isinstance(value, str):
        raise BadInput("body", f"{key}: expected a base64 string")
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise BadInput("body", f"{key}: not valid base64") from None
    data = tpm2.unwrap_tpm2b(raw, "body", key)
    if not data:
        raise BadInput("body", f"{key}: an empty TPM2B")
    return data


class Attestor:
    """The TPM side of the two requests; one request at a time talks to the TPM."""

    def __init__(self, cfg: Config, tls_ca: bytes):
        self.cfg, self.tls_ca = cfg, tls_ca
        self._lock = threading.Lock()
        self._nvml: nvml.Nvml | None = None
        self.issuer = platforms.issuer(cfg.platform)(cfg, log)

    @contextmanager
    def _tpm(self):
        """The TPM for one request at a time."""
        with self._lock, Tpm(self.cfg.tpm) as tpm:
            yield tpm

    def _gpus(self, nonce: bytes) -> list[nvml.Collected]:
        """Every GPU's report on the nonce derived from the client's, and its certificate chain."""
        if self._nvml is None:
            self._nvml = nvml.Nvml(self.cfg.nvml)  # loaded on first use: a failure is a 503, retried next time
        return self._nvml.collect(derive_gpu_nonce(nonce))

    def warm(self) -> None:
        """The platform's work before the first client asks (azure-cvm: the VCEK chain)."""
        self.issuer.warm(self._tpm)

    def _quote(self, tpm: Tpm, ak: Key, nonce: bytes) -> tuple[bytes, bytes, dict[int, bytes]]:
        for _ in range(QUOTE_ATTEMPTS):
            attest, signature = tpm.quote(ak.handle, nonce, ALG_SHA256, QUOTED_PCRS)
            values = tpm.pcr_read(ALG_SHA256, QUOTED_PCRS)
            quote, sig = tpm2.parse_quote(attest), tpm2.parse_signature(signature)
            if tpm2.pcr_digest(quote.selections, {"sha256": values}, sig.hash) == quote.pcr_digest:
                return attest, signature, values
        raise TpmError("Quote", detail=f"the PCRs changed between TPM2_Quote and TPM2_PCR_Read {QUOTE_ATTEMPTS} times")

    def evidence(self, nonce: bytes) -> dict:
        gpus = self._gpus(nonce) if self.cfg.nvml else []  # before the quote, which covers them (evidence v2)
        with self._tpm() as tpm:
            ak = self.issuer.ak(tpm)
            attest, signature, values = self._quote(tpm, ak, binding(nonce, gpus) if self.cfg.nvml else nonce)
            held = self.issuer.read(tpm)
        trust: dict[str, object] = dict(self.issuer.fields(held))  # what ties the AK to hardware, in order
        ak_pub = tpm2.load_ak(ak.public, "ak_public").public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        if self.cfg.nvml:
            trust["gpus"] = [{"report": _b64(g.report), "cert_chain": g.cert_chain.decode()} for g in gpus]
        return {"version": 2 if self.cfg.nvml else VERSION, "platform": self.cfg.platform, "nonce": nonce.hex(),
                "quote": _b64(attest), "signature": _b64(signature),
                "pcrs": {"sha256": {str(i): values[i].hex() for i in QUOTED_PCRS}},
                "ak_pub": ak_pub.decode(), "ak_public": _b64(ak.public), "tls_ca": self.tls_ca.decode(), **trust}

    def activate(self, credential_blob: bytes, secret: bytes) -> bytes:
        """Credential activation (platforms whose issuer serves it)."""
        with self._tpm() as tpm:
            return self.issuer.activate(tpm, self.issuer.ak(tpm), credential_blob, secret)


class Handler(BaseHTTPRequestHandler):
    """HTTP/1.0, one request per connection. Every answer is JSON; errors are {"error": "..."}."""

    server_version = "mithril-attestation"
    sys_version = ""
    timeout = REQUEST_TIMEOUT
    routes = {"/attestation": "GET", "/attestation/activate": "POST"}
    attestor: Attestor  # set on the subclass made by `serve`

    def log_message(self, format: str, *args) -> None:  # noqa: A002 -- the base class's name
        log(f"{self.client_address[0]} {format % args}")

    def _answer(self, status: int, doc: dict, headers: dict[str, str] | None = None) -> None:
        body = json.dumps(doc).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _error(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        self._answer(status, {"error": message}, headers)

    def _body(self, length: int) -> dict:
        try:
            doc = json.loads(self.rfile.read(length))
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
            raise BadInput("body", "not JSON") from None
        if not isinstance(doc, dict):
            raise BadInput("body", "expected a JSON object")
        return doc

    def _handle(self) -> None:
        url = urlsplit(self.path)
        allowed = self.routes.get(url.path)
        if allowed is None:
            return self._error(HTTPStatus.NOT_FOUND, f"no such path: {url.path}")
        if self.command != allowed:
            return self._error(HTTPStatus.METHOD_NOT_ALLOWED, f"{url.path} takes {allowed}", {"Allow": allowed})
        if url.path == "/attestation/activate" and not self.attestor.issuer.activation:
            served = ", ".join(n for n in PLATFORMS if platforms.issuer(n).activation)
            return self._error(HTTPStatus.NOT_FOUND, f"credential activation is served on {served}, "
                                                     f"not {self.attestor.cfg.platform}")
        try:  # the request's input: a fault here is the client's
            if url.path == "/attestation":
                nonces = parse_qs(url.query).get("nonce", [])
                if len(nonces) != 1:
                    raise BadInput("nonce", "exactly one nonce=HEX query parameter is required")
                args = (parse_nonce(nonces[0]),)
            else:
                length = self.headers.get("Content-Length", "")
                if not (length.isascii() and length.isdigit()):
                    return self._error(HTTPStatus.LENGTH_REQUIRED, "a Content-Length header is required")
                if int(length) > MAX_BODY:
                    return self._error(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"body larger than {MAX_BODY} bytes")
                doc = self._body(int(length))
                args = (_body_tpm2b(doc, "credential_blob"), _body_tpm2b(doc, "secret"))
        except BadInput as e:
            return self._error(HTTPStatus.BAD_REQUEST, str(e))
        try:
            if url.path == "/attestation":
                return self._answer(HTTPStatus.OK, self.attestor.evidence(*args))
            return self._answer(HTTPStatus.OK, {"credential": _b64(self.attestor.activate(*args))})
        except TpmError as e:
            log(f"{self.command} {url.path}: {e}")
            if url.path == "/attestation/activate" and e.parameter is not None:
                return self._error(HTTPStatus.BAD_REQUEST, f"the TPM rejected the credential: {e}")
            return self._error(HTTPStatus.INTERNAL_SERVER_ERROR, str(e))
        except imds.ImdsError as e:
            log(f"{self.command} {url.path}: {e}")
            return self._error(HTTPStatus.BAD_GATEWAY, str(e))
        except nvml.GpuError as e:  # a GPU profile never serves evidence without its GPUs'
            log(f"{self.command} {url.path}: {e}")
            return self._error(HTTPStatus.SERVICE_UNAVAILABLE, f"GPU evidence could not be collected: {e}")

    def _guarded(self) -> None:
        try:
            self._handle()
        except Exception as e:  # never let one request take the server down
            log(f"{self.command} {self.path}: internal error: {type(e).__name__}: {e}")
            try:
                self._error(HTTPStatus.INTERNAL_SERVER_ERROR, "internal error")
            except OSError:
                pass  # the client is gone

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_HEAD = _guarded


def serve(cfg: Config, host: str, port: int) -> None:
    tls_ca = start(cfg)
    attestor = Attestor(cfg, tls_ca)
    attestor.warm()
    handler = type("BoundHandler", (Handler,), {"attestor": attestor})
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    log(f"attestation server listening on {server.server_address[0]}:{server.server_address[1]} "
        f"(platform {cfg.platform}, TPM {cfg.tpm})")
    try:
        server.serve_forever()
    finally:
        server.server_close()
