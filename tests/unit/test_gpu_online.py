"""The online path of GPU verification (mithril_client/gpu/online.py) against a local STAND-IN
HTTP server: NVIDIA's RIM service and OCSP responder are not reachable from here. The stand-in
serves NVIDIA's real sample RIMs (as the RIM service's JSON) and OCSP answers signed with keys
made in this test — so the positive OCSP cases run on a chain generated here, and NVIDIA's real
chain is only shown to be refused when a responder that is not NVIDIA's answers for it."""

from __future__ import annotations

import base64
import datetime as dt
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import ocsp
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from mithril_client.gpu import online as net
from mithril_client.gpu.check import RimSet, check_gpu

FIX = Path(__file__).resolve().parent.parent / "fixtures" / "nvidia"
REPORT = bytes.fromhex((FIX / "hopperAttestationReport.txt").read_text().strip())
CHAIN = (FIX / "hopperCertChain.txt").read_bytes()
NONCE = REPORT[4:36]
NOW = dt.datetime(2024, 6, 1, tzinfo=dt.timezone.utc)


@dataclass
class StandIn:
    rims: dict[str, bytes] = field(default_factory=dict)  # id -> RIM file
    status: ocsp.OCSPCertStatus = ocsp.OCSPCertStatus.GOOD
    signer: tuple | None = None  # (certificate, key) that signs OCSP answers
    issuer: x509.Certificate | None = None
    echo_nonce: bool = True
    next_update: dt.timedelta = dt.timedelta(days=1)
    serial_delta: int = 0
    requested: list[str] = field(default_factory=list)


def make_handler(state: StandIn):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def answer(self, code, body, kind):
            self.send_response(code)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):  # noqa: N802 -- http.server's name
            rim_id = self.path.rsplit("/", 1)[-1]
            state.requested.append(rim_id)
            if rim_id == "GARBAGE" or rim_id not in state.rims:
                return self.answer(404 if rim_id != "GARBAGE" else 200, b"{not json", "application/json")
            self.answer(200, json.dumps({"id": rim_id, "rim": base64.b64encode(state.rims[rim_id]).decode()}).encode(),
                        "application/json")

        def do_POST(self):  # noqa: N802
            req = ocsp.load_der_ocsp_request(self.rfile.read(int(self.headers["Content-Length"])))
            state.requested.append(f"ocsp:{req.serial_number:x}")
            cert_signer, key = state.signer
            builder = (ocsp.OCSPResponseBuilder()
                       .add_response_by_hash(req.issuer_name_hash, req.issuer_key_hash, req.serial_number + state.serial_delta,
                                             req.hash_algorithm, state.status, NOW - dt.timedelta(hours=1),
                                             NOW + state.next_update,
                                             NOW - dt.timedelta(days=1) if state.status == ocsp.OCSPCertStatus.REVOKED else None,
                                             x509.ReasonFlags.key_compromise if state.status == ocsp.OCSPCertStatus.REVOKED else None)
                       .responder_id(ocsp.OCSPResponderEncoding.HASH, cert_signer).certificates([cert_signer]))
            if state.echo_nonce:
                builder = builder.add_extension(req.extensions.get_extension_for_class(x509.OCSPNonce).value, False)
            resp = builder.sign(key, hashes.SHA384())
            self.answer(200, resp.public_bytes(serialization.Encoding.DER), "application/ocsp-response")
    return Handler


@pytest.fixture
def stand_in():
    state = StandIn()
    server = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(state))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    yield state, net.Online(rim_service=f"{base}/v1/rim/", ocsp_url=f"{base}/")
    server.shutdown()
    server.server_close()


def _cert(subject: str, key, issuer=None, issuer_key=None, ca=True, eku=None):
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    b = (x509.CertificateBuilder().subject_name(name).issuer_name(issuer.subject if issuer else name)
         .public_key(key.public_key()).serial_number(x509.random_serial_number())
         .not_valid_before(dt.datetime(2020, 1, 1)).not_valid_after(dt.datetime(2099, 1, 1))
         .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if eku:
        b = b.add_extension(x509.ExtendedKeyUsage(eku), critical=False)
    return b.sign(issuer_key or key, hashes.SHA384())


@pytest.fixture(scope="module")
def chain():
    keys = [ec.generate_private_key(ec.SECP384R1()) for _ in range(3)]
    root = _cert("stand-in root", keys[0])
    mid = _cert("stand-in intermediate", keys[1], root, keys[0])
    leaf = _cert("stand-in leaf", keys[2], mid, keys[1], ca=False)
    return [leaf, mid, root], keys


def test_fetch_rim_over_http(stand_in):
    state, online = stand_in
    raw = (FIX / "1010_0200_882_96005E0001_PROD.swidtag").read_bytes()
    state.rims["NV_GPU_VBIOS_1010_0200_882_96005E0001"] = raw
    assert net.fetch_rim("NV_GPU_VBIOS_1010_0200_882_96005E0001", online) == raw
    with pytest.raises(net.Unreachable, match="404"):
        net.fetch_rim("NV_GPU_DRIVER_GH100_1.0", online)
    with pytest.raises(net.Unreachable, match="not a RIM service answer"):
        net.fetch_rim("GARBAGE", online)
    with pytest.raises(net.Unreachable):
        net.fetch_rim("X", net.Online(rim_service="http://127.0.0.1:9/v1/rim/"))


def test_check_gpu_asks_the_service_for_nvidias_ids_and_uses_only_matching_rims(stand_in, chain):
    state, online = stand_in
    # the service answers with a RIM for another VBIOS under this GPU's id: never used
    state.rims["NV_GPU_VBIOS_1010_0200_882_96009F0001"] = (FIX / "1010_0200_882_96005E0001_PROD.swidtag").read_bytes()
    state.signer = (chain[0][1], chain[1][1])  # answers OCSP as someone who is not NVIDIA's issuer
    rows = {r.check: r for r in check_gpu(REPORT, CHAIN, NONCE, RimSet(), now=NOW, online=online)}
    assert state.requested[:2] == ["NV_GPU_DRIVER_GH100_550.90.07", "NV_GPU_VBIOS_1010_0200_882_96009F0001"]
    assert rows["gpu vbios"].failed and rows["gpu driver"].failed
    assert "is for 96.00.5E.00.01" in rows["gpu revocation"].actual
    assert rows["gpu revocation"].failed and "not issued by" in rows["gpu revocation"].actual
    assert rows["gpu signature"].result == "ok"


def test_offline_revocation_is_said_not_checked():
    rows = {r.check: r for r in check_gpu(REPORT, CHAIN, NONCE, RimSet(), now=NOW)}
    assert rows["gpu revocation"].result == "skipped" and not rows["gpu revocation"].failed


@pytest.mark.parametrize("change,ok,why", [
    ({}, True, "good"),
    ({"status": ocsp.OCSPCertStatus.REVOKED}, False, "REVOKED (key_compromise)"),
    ({"status": ocsp.OCSPCertStatus.UNKNOWN}, False, "UNKNOWN"),
    ({"echo_nonce": False}, False, "nonce"),
    ({"next_update": -dt.timedelta(hours=2)}, False, "not current"),
    ({"serial_delta": 1}, False, "another certificate"),
])
def test_ocsp_answers(stand_in, chain, change, ok, why):
    state, online = stand_in
    certs, keys = chain
    state.signer = (certs[1], keys[1])  # the issuer of the leaf answers for it
    for k, v in change.items():
        setattr(state, k, v)
    result = net.check_revocation(certs[:2], online, NOW)
    assert result[0] is ok and why in result[1], result


def test_a_delegated_responder_needs_the_issuers_word_and_the_ocsp_eku(stand_in, chain):
    state, online = stand_in
    certs, keys = chain
    rkey = ec.generate_private_key(ec.SECP384R1())
    state.signer = (_cert("responder", rkey, certs[1], keys[1], ca=False, eku=[ExtendedKeyUsageOID.OCSP_SIGNING]), rkey)
    assert net.check_revocation(certs[:2], online, NOW)[0]
    state.signer = (_cert("responder", rkey, certs[1], keys[1], ca=False, eku=[ExtendedKeyUsageOID.SERVER_AUTH]), rkey)
    assert "not for OCSP signing" in net.check_revocation(certs[:2], online, NOW)[1]
    state.signer = (_cert("responder", rkey, certs[2], keys[0], ca=False, eku=[ExtendedKeyUsageOID.OCSP_SIGNING]), rkey)
    assert "not issued by" in net.check_revocation(certs[:2], online, NOW)[1]


def test_an_unreachable_responder_fails_the_check(chain):
    certs, _ = chain
    ok, why = net.check_revocation(certs[:2], net.Online(ocsp_url="http://127.0.0.1:9/"), NOW)
    assert not ok and "OCSP" in why


def test_lock_pins_the_driver_rim_from_the_service(stand_in, tmp_path):
    """`mithril-build lock`'s path for files.nvidia-driver-rim, against the stand-in RIM service
    serving NVIDIA's sample driver RIM (545.00): pinned when it verifies at the time of pinning,
    refused at a time its signing certificate has expired (today, for this sample)."""
    from types import SimpleNamespace

    from pipeline.errors import BadInput
    from pipeline.lock import FilePin
    from pipeline.orchestrate import pin_driver_rim

    state, online = stand_in
    raw = (FIX / "Driver_RIM_test_no_gpu.swidtag").read_bytes()
    state.rims["NV_GPU_DRIVER_GH100_545.00"] = raw
    pin = FilePin(url=online.rim_service + "NV_GPU_DRIVER_GH100_545.00", path="measurements/nvidia/rim.swidtag")
    ctx = SimpleNamespace(root=tmp_path)
    entry: dict = {}
    with pytest.raises(BadInput, match="expired 2025-"):
        pin_driver_rim(ctx, pin, entry)
    assert not (tmp_path / "measurements").exists() and entry == {}
    pin_driver_rim(ctx, pin, entry, now=NOW)
    assert (tmp_path / "measurements/nvidia/rim.swidtag").read_bytes() == raw
    assert entry["checked_at"] == "2024-06-01T00:00:00Z" and len(entry["sha256"]) == 64
    state.rims["NV_GPU_DRIVER_GH100_550.90.07"] = raw  # a RIM served under another driver's id
    wrong = FilePin(url=online.rim_service + "NV_GPU_DRIVER_GH100_550.90.07", path="x.swidtag")
    with pytest.raises(BadInput, match="holds the RIM of driver 545.00"):
        pin_driver_rim(ctx, wrong, {}, now=NOW)
