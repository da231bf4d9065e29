"""The guest's serving stack on this machine, without a VM: a swtpm with a certified EK (as
`mithril-build run` makes it), PCR 15 extended the way measured-setup does, the attestation server
on Debian's /usr/bin/python3 (what the image runs), Debian's Caddy with the app disk's Caddyfile,
and a static app. measurements.json is written from the TPM's own PCR values, read with
tpm2_pcrread (not by our code).
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import http.client
import json
import os
import re
import select
import socket
import ssl
import subprocess
import threading
import time
from pathlib import Path

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from pipeline import templates
from pipeline.swtpm import Swtpm, manufacture
from tests.conftest import REPO, need

DEBIAN_PYTHON = "/usr/bin/python3"
START_TIMEOUT = 120.0  # a guard against a hung start, not a speed check
ROOTHASH = hashlib.sha256(b"an application disk").hexdigest()
PAGE = b"<!doctype html><title>attested</title><p>hello from inside the measured image</p>\n"


# The app: the page on GET, and a stand-in for Triton's generate extension on POST (it echoes the
# prompt; the request and answer shapes are Triton's: text_input/max_tokens -> text_output).
APP = """
import json, sys
from http.server import BaseHTTPRequestHandler, HTTPServer
page = open(sys.argv[2], "rb").read()
class App(BaseHTTPRequestHandler):
    def reply(self, code, body, kind):
        self.send_response(code)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def do_GET(self):
        self.reply(200, page, "text/html")
    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if self.path != "/v2/models/ensemble/generate" or "text_input" not in body:
            return self.reply(400, b'{"error": "bad request"}', "application/json")
        out = {"model_name": "ensemble", "text_output": "echo: " + body["text_input"][: body.get("max_tokens", 16)]}
        self.reply(200, json.dumps(out).encode(), "application/json")
HTTPServer(("127.0.0.1", int(sys.argv[1])), App).serve_forever()
"""


def need_stack() -> None:
    need("swtpm", "swtpm_setup", "/usr/bin/swtpm_localca", "tpm2_startup", "tpm2_pcrread", "tpm2_pcrextend",
         "caddy", DEBIAN_PYTHON)
    probe = subprocess.run([DEBIAN_PYTHON, "-c", "import cryptography"], capture_output=True, check=False)
    if probe.returncode:
        pytest.skip("needs Debian's python3-cryptography for /usr/bin/python3 (installed by scripts/setup.sh)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        if proc.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"{proc.args[0]} did not listen on {port}:\n{log.read_text(errors='replace')[-3000:]}")
        time.sleep(0.05)


class AttestationServer:
    """`python3 -m attestation_server` on Debian's Python, its stderr in a file."""

    def __init__(self, tpm_spec: str, work: Path, *extra: str, platform: str = "qemu", listen: str = "127.0.0.1:0"):
        self.work, self.log = work, work / "server.log"
        self.argv = [DEBIAN_PYTHON, "-m", "attestation_server", "--listen", listen, "--platform", platform,
                     "--tpm", tpm_spec, "--tls-dir", str(work / "tls"), "--state-dir", str(work / "state"), *extra]
        self.proc: subprocess.Popen | None = None
        self.port = 0

    def start(self) -> AttestationServer:
        offset = self.log.stat().st_size if self.log.exists() else 0
        with open(self.log, "ab") as err:
            self.proc = subprocess.Popen(self.argv, stdout=subprocess.DEVNULL, stderr=err, cwd=self.work,
                                         env={**os.environ, "PYTHONPATH": str(REPO)})
        deadline = time.monotonic() + START_TIMEOUT
        while not (found := re.search(r"listening on 127\.0\.0\.1:(\d+)", self.log_text()[offset:])):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                pytest.fail(f"the attestation server did not start:\n{self.log_text()[offset:]}")
            time.sleep(0.05)
        self.port = int(found.group(1))
        return self

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, dict | None, http.client.HTTPResponse]:
        """Plain HTTP straight to the server (as Caddy reaches it)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=START_TIMEOUT)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            resp = conn.getresponse()
            data = resp.read()
        finally:
            conn.close()
        return resp.status, json.loads(data) if data else None, resp

    def evidence(self, nonce: bytes = bytes(range(32))) -> dict:
        status, doc, _ = self.request("GET", f"/attestation?nonce={nonce.hex()}")
        assert status == 200, doc
        return doc

    def activate(self, blob: bytes, secret: bytes) -> tuple[int, dict]:
        body = json.dumps({"credential_blob": base64.b64encode(blob).decode(),
                           "secret": base64.b64encode(secret).decode()}).encode()
        status, doc, _ = self.request("POST", "/attestation/activate", body, {"Content-Type": "application/json"})
        return status, doc

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None


def pcr_values(tpm: Swtpm) -> dict[int, str]:
    """sha256 PCRs 0-15 as tpm2_pcrread prints them."""
    out = yaml.safe_load(tpm.tool(["tpm2_pcrread", "sha256:" + ",".join(map(str, range(16)))]).text)
    return {int(k): f"{v:064x}" if isinstance(v, int) else v.lower().removeprefix("0x") for k, v in out["sha256"].items()}


class Stack:
    """Start with start(); stop() removes every process. `url`, `ek_ca`, `measurements` for clients."""

    def __init__(self, work: Path):
        self.work = work
        self.procs: list[subprocess.Popen] = []
        self.tpm: Swtpm | None = None
        self.server: AttestationServer | None = None

    def start(self) -> Stack:
        work = self.work
        self.ek_ca = manufacture(work / "tpm", work / "ek-ca")
        (work / "ek-ca.pem").write_bytes(self.ek_ca)
        self.tpm = Swtpm(work / "tpm", for_qemu=False).start()
        self.tpm.tool(["tpm2_startup", "-c"])
        # what measured-setup does before the app starts: the roothash, then the zero sentinel
        self.tpm.tool(["tpm2_pcrextend", f"15:sha256={ROOTHASH}"])
        self.tpm.tool(["tpm2_pcrextend", f"15:sha256={'00' * 32}"])
        self.pcrs = pcr_values(self.tpm)
        self.measurements = self.write_measurements(work / "measurements.json", self.pcrs)

        self.server = AttestationServer(f"swtpm:{self.tpm.socket}", work, "--tls-owner",
                                        f"{os.getuid()}:{os.getgid()}").start()
        (work / "index.html").write_bytes(PAGE)
        app_port = self.app_port = free_port()
        self._spawn([DEBIAN_PYTHON, "-c", APP, str(app_port), work / "index.html"], "app.log", app_port)
        self.port = free_port()
        caddyfile = templates.render(templates.environment(REPO / "appdisk", "appdisk"), "Caddyfile.j2", {
            "ingress_port": self.port, "tls_dir": work / "tls",
            "upstreams": {"app": f"127.0.0.1:{app_port}", "attestation": f"127.0.0.1:{self.server.port}"}},
            "appdisk/Caddyfile.j2")
        (work / "Caddyfile").write_text(caddyfile)
        home = work / "caddy-home"
        self._spawn(["caddy", "run", "--config", work / "Caddyfile", "--adapter", "caddyfile"], "caddy.log", self.port,
                    {"HOME": str(home), "XDG_DATA_HOME": str(home), "XDG_CONFIG_HOME": str(home)})
        self.url = f"https://127.0.0.1:{self.port}"
        return self

    def write_measurements(self, path: Path, pcrs: dict[int, str], **changed: str) -> Path:
        doc = {"version": 1, "platform": "qemu", "mode": "production",
               "pcrs": {str(i): {"expected": [changed.get(f"pcr{i}", v)], "policy": "enforce"} for i, v in pcrs.items()},
               "application_disk": {"roothash": ROOTHASH}}
        path.write_text(json.dumps(doc, indent=1))
        return path

    def _spawn(self, argv, log: str, port: int, env: dict | None = None) -> None:
        with open(self.work / log, "ab") as out:
            proc = subprocess.Popen([str(a) for a in argv], stdout=out, stderr=subprocess.STDOUT,
                                    env={**os.environ, **(env or {})})
        self.procs.append(proc)
        wait_port(port, proc, self.work / log)

    def stop(self) -> None:
        for proc in self.procs:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self.server is not None:
            self.server.stop()
        if self.tpm is not None:
            self.tpm.stop()


class TlsProxy:
    """A man in the middle with its own certificate: terminates TLS, opens TLS to the real server,
    relays bytes both ways. The evidence it relays is genuine; the channel is not. With
    `mitm = False` it relays the TCP stream untouched (the real server's TLS)."""

    def __init__(self, upstream_port: int, work: Path, mitm: bool = True, rewrite_tls_ca: bool = False):
        self.mitm, self.rewrite_tls_ca = mitm, rewrite_tls_ca
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mithril")])
        now = dt.datetime.now(dt.timezone.utc)
        cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
                .serial_number(7).not_valid_before(now - dt.timedelta(hours=1))
                .not_valid_after(now + dt.timedelta(days=1)).sign(key, hashes.SHA256()))
        self.cert_pem = cert.public_bytes(serialization.Encoding.PEM)
        (work / "mitm.pem").write_bytes(self.cert_pem)
        (work / "mitm.key").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                          serialization.NoEncryption()))
        self.server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.server_ctx.load_cert_chain(work / "mitm.pem", work / "mitm.key")
        self.client_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        self.client_ctx.check_hostname, self.client_ctx.verify_mode = False, ssl.CERT_NONE
        self.upstream = upstream_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                raw, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(raw,), daemon=True).start()

    def _handle(self, raw):
        try:
            up = socket.create_connection(("127.0.0.1", self.upstream))
            if self.mitm:
                raw = self.server_ctx.wrap_socket(raw, server_side=True)
                up = self.client_ctx.wrap_socket(up)
        except OSError:
            return
        down = raw
        if self.mitm and self.rewrite_tls_ca:
            try:
                self._relay_evidence(down, up)
            except (OSError, ValueError, http.client.HTTPException):
                down.close()
                up.close()
                return
        # One thread for both directions (an SSL object must not be read and written concurrently),
        # non-blocking reads: a TLS 1.3 session ticket makes a socket readable with no data for us.
        try:
            for x in (down, up):
                x.setblocking(False)
            while True:
                ready = [x for x in (down, up) if isinstance(x, ssl.SSLSocket) and x.pending()]
                ready = ready or select.select([down, up], [], [], 120)[0]
                if not ready:
                    return
                for x in ready:
                    try:
                        data = x.recv(65536)
                    except (ssl.SSLWantReadError, BlockingIOError):
                        continue
                    if not data:
                        return
                    other = up if x is down else down
                    other.setblocking(True)
                    other.sendall(data)
                    other.setblocking(False)
        except OSError:
            return
        finally:
            down.close()
            up.close()

    def _relay_evidence(self, down, up):
        """The first exchange (GET /attestation): forward it, and answer with the genuine evidence
        whose tls_ca is replaced by this relay's own certificate (the smarter relay of issue 19)."""
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = down.recv(65536)
            if not chunk:
                raise ValueError("client closed")
            head += chunk
        up.sendall(head)
        resp = http.client.HTTPResponse(up, method="GET")
        resp.begin()
        doc = json.loads(resp.read())
        doc["tls_ca"] = self.cert_pem.decode()
        body = json.dumps(doc).encode()
        out = f"HTTP/1.1 {resp.status} {resp.reason}\r\nContent-Type: application/json\r\n" \
              f"Content-Length: {len(body)}\r\n\r\n".encode()
        down.sendall(out + body)

    def close(self):
        self.listener.close()
