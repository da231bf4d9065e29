"""AttestedSession: HTTPS to a Mithril server that is trusted only once its evidence verifies.

On every new TLS connection the session sends a fresh 32-byte nonce over that same connection,
verifies the evidence (quote, every PCR of measurements.json, the AK's tie to hardware), then
requires the certificate the server presented on this connection to be the attested CA or issued
by it: the channel ends inside the measured image. Anything else closes the connection and raises
AttestationFailed before a byte of application data is sent.

The pin is per connection, not per session: behind a load balancer each replica makes its own CA
at boot, and a session may talk to any replica that proves it runs the measured image. Which one
answered is `Response.replica` / `session.replica`: the sha256 fingerprint of the attested CA
certificate (docs/attestation.md says what this gives up against a session-wide pin).
"""

from __future__ import annotations

import base64
import dataclasses
import http.client
import json as jsonlib
import secrets
import socket
import ssl
import threading
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

from .certs import issued_by, pem_bundle
from .errors import BadInput, MithrilError
from .evidence import MAX_DOCUMENT, parse_evidence
from .measurements import Measurements, Row, load_measurements, parse_measurements
from .verify import AttestationFailed, Report, Trust, verify_evidence

NONCE_BYTES = 32
IDEMPOTENT = ("GET", "HEAD", "OPTIONS")


__all__ = ["AttestationFailed", "AttestedSession", "Response", "Unreachable", "tls_row"]


class Unreachable(MithrilError):
    """The server could not be reached or broke the connection (exit 3)."""

    exit_code = 3


@dataclass(frozen=True)
class Response:
    status: int
    headers: dict[str, str]
    body: bytes
    replica: str | None = None  # "sha256:<hex>" of the attested CA of the replica that answered

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")

    def json(self):
        return jsonlib.loads(self.body)


class AttestedSession:
    """`AttestedSession("https://host:port", measurements="measurements.json")`, then `.get(path)`,
    `.post(path, json=…)`. `ek_ca`: the per-boot swtpm EK CA of a local `mithril-build run`
    (PEM bytes or a path); Azure platforms need none (their roots ship with this package)."""

    def __init__(self, base_url: str, measurements: Measurements | str | Path | dict, *,
                 ek_ca: bytes | str | Path | None = None, trust: Trust | None = None,
                 timeout: float = 60.0):
        try:
            url = urllib.parse.urlsplit(base_url)
            self.host, self.port = url.hostname, url.port or 443
        except ValueError:  # a bad port, an unclosed [IPv6 literal
            raise BadInput("url", f"{base_url!r} is not an https://host[:port] URL") from None
        if url.scheme != "https" or not url.hostname:
            raise BadInput("url", f"{base_url!r} is not an https://host[:port] URL")
        self.prefix = url.path.rstrip("/")
        self.measurements = _measurements(measurements)
        if isinstance(ek_ca, (str, Path)):
            try:
                ek_ca = Path(ek_ca).read_bytes()
            except OSError as e:
                raise BadInput(str(ek_ca), f"cannot read the EK CA: {e.strerror}") from None
        if trust is not None and not isinstance(trust, Trust):
            raise BadInput("trust", f"expected a mithril_client.Trust, got {type(trust).__name__}")
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
            raise BadInput("timeout", f"expected a number of seconds > 0, got {timeout!r}")
        self.trust = trust or Trust(ek_roots=ek_ca)
        # AIA fetches never outlast the session's timeout
        self.trust = dataclasses.replace(self.trust, fetch_budget=min(timeout, self.trust.fetch_budget))
        self.timeout = timeout
        self.report: Report | None = None  # of the last attestation
        self.replica: str | None = None  # the attested CA fingerprint of the last attested connection
        self._conn: _AttestedConnection | None = None
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ requests

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None,
                json=None) -> Response:
        if json is not None:
            body = jsonlib.dumps(json).encode()
            headers = {"Content-Type": "application/json", **(headers or {})}
        with self._lock:
            for attempt in (1, 2):
                conn = self._conn or self._new_connection()
                reused = conn.sock is not None
                try:
                    conn.request(method, self.prefix + path, body=body, headers=headers or {})
                    resp = conn.getresponse()
                    data = resp.read()
                except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError) as e:
                    conn.close()
                    self._conn = None
                    if reused and attempt == 1 and method.upper() in IDEMPOTENT:
                        continue  # the server closed an idle connection: attest a new one
                    raise Unreachable(f"{self.host}:{self.port}: connection lost: {e}") from None
                except (OSError, http.client.HTTPException) as e:
                    conn.close()
                    self._conn = None
                    raise Unreachable(f"{self.host}:{self.port}: {e}") from None
                if resp.will_close:
                    conn.close()
                    self._conn = None
                return Response(resp.status, {k.lower(): v for k, v in resp.getheaders()}, data, conn.replica)
        raise AssertionError("unreachable")

    def get(self, path: str, **kw) -> Response:
        return self.request("GET", path, **kw)

    def post(self, path: str, **kw) -> Response:
        return self.request("POST", path, **kw)

    def attest(self) -> Report:
        """Open (and attest) a connection now; returns the verification report."""
        with self._lock:
            if self._conn is None or self._conn.sock is None:
                self._conn = self._new_connection()
                self._conn.connect()
            return self.report

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ------------------------------------------------------------------ attestation

    def _new_connection(self) -> _AttestedConnection:
        self._conn = _AttestedConnection(self, self.host, self.port, self.timeout)
        return self._conn

    def _attest(self, sock: ssl.SSLSocket) -> str:
        """Runs on every new connection, before any application request."""
        nonce = secrets.token_bytes(NONCE_BYTES)
        where = f"https://{self.host}:{self.port}{self.prefix}/attestation"
        status, body = _exchange(sock, self.host, "GET", f"{self.prefix}/attestation?nonce={nonce.hex()}")
        if status != 200:
            raise BadInput(where, f"HTTP {status} instead of evidence: {body[:200].decode(errors='replace')}")
        evidence = parse_evidence(body, f"{where} (evidence)")

        def activate(blob: bytes, secret: bytes) -> bytes:
            request = {"credential_blob": base64.b64encode(blob).decode(), "secret": base64.b64encode(secret).decode()}
            status, answer = _exchange(sock, self.host, "POST", f"{self.prefix}/attestation/activate",
                                       jsonlib.dumps(request).encode())
            if status != 200:
                return b""  # the TPM could not activate it: the row fails
            try:
                return base64.b64decode(jsonlib.loads(answer)["credential"], validate=True)
            except (ValueError, KeyError, TypeError):
                raise BadInput(f"{where}/activate", "the answer is not {\"credential\": base64}") from None

        # the TLS rows join the report before the verdict: collect every row, then decide
        report = verify_evidence(evidence, nonce, self.measurements, self.trust, activate, raise_on_failure=False)
        presented = sock.getpeercert(binary_form=True)
        report.extra.append(tls_row(presented, evidence.tls_ca))  # the pin: this connection, this CA
        replica = replica_id(evidence.tls_ca)
        report.extra.append(Row("replica", "any replica that proves the measured image", replica, "info", "ok"))
        self.report = report
        if not report.ok:
            raise AttestationFailed(report)
        self.replica = replica
        return replica


def tls_row(presented_der: bytes, tls_ca_pem: bytes) -> Row:
    """The certificate presented on the connection must be the attested CA or issued by it."""
    ca = pem_bundle(tls_ca_pem, "evidence: tls_ca")[0]
    try:
        cert = x509.load_der_x509_certificate(presented_der)
    except ValueError:
        return Row("tls certificate", "the attested CA or issued by it", "unreadable", "enforce", "MISMATCH")
    ok = cert == ca or issued_by(cert, ca)
    fingerprint = cert.fingerprint(_SHA256()).hex()
    return Row("tls certificate", "the attested CA or issued by it", f"sha256:{fingerprint}", "enforce",
               "ok" if ok else "MISMATCH")


def replica_id(tls_ca_pem: bytes) -> str:
    """Which replica: "sha256:" + the fingerprint of the attested CA certificate (its DER, as
    `openssl x509 -fingerprint -sha256` prints it). Each replica makes its own CA at boot."""
    return "sha256:" + pem_bundle(tls_ca_pem, "evidence: tls_ca")[0].fingerprint(_SHA256()).hex()


def _SHA256():
    from cryptography.hazmat.primitives import hashes

    return hashes.SHA256()


class _AttestedConnection(http.client.HTTPSConnection):
    """An HTTPS connection that attests the server right after the TLS handshake. The handshake
    itself checks nothing: trust comes from the evidence, not from a web PKI."""

    def __init__(self, session: AttestedSession, host: str, port: int, timeout: float):
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        super().__init__(host, port, timeout=timeout, context=ctx)
        self._session = session
        self.replica: str | None = None  # set once this connection is attested

    def connect(self) -> None:
        try:
            raw = socket.create_connection((self.host, self.port), self.timeout)
            self.sock = self._context.wrap_socket(raw, server_hostname=None)
        except (OSError, ssl.SSLError) as e:
            raise Unreachable(f"{self.host}:{self.port}: {e}") from None
        try:
            self.replica = self._session._attest(self.sock)
        except BaseException:
            self.close()
            raise


def _exchange(sock: ssl.SSLSocket, host: str, method: str, target: str, body: bytes = b"") -> tuple[int, bytes]:
    """One HTTP/1.1 request/response on the attested socket (keep-alive), before http.client uses it."""
    head = f"{method} {target} HTTP/1.1\r\nHost: {host}\r\nAccept: application/json\r\n"
    if method == "POST":
        head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    try:
        sock.sendall(head.encode() + b"\r\n" + body)
        resp = http.client.HTTPResponse(sock, method=method)
        resp.begin()
        data = resp.read(MAX_DOCUMENT + 1)
    except (OSError, http.client.HTTPException) as e:
        raise Unreachable(f"{host}: {method} {target.split('?')[0]}: {e}") from None
    if len(data) > MAX_DOCUMENT:
        raise BadInput(f"https://{host}{target.split('?')[0]}", f"answer larger than {MAX_DOCUMENT} bytes")
    if resp.will_close:
        raise Unreachable(f"{host}: the server closed the connection after {target.split('?')[0]}")
    return resp.status, data


def _measurements(m) -> Measurements:
    if isinstance(m, Measurements):
        return m
    if isinstance(m, dict):
        return parse_measurements(m, "measurements")
    return load_measurements(Path(m))
