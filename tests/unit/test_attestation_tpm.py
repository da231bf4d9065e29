"""attestation_server.tpm without a TPM: marshalling round trips and error paths against a
stand-in TPM (a unix socket that answers canned responses, NOT a TPM), and the IMDS THIM client
against a stand-in IMDS (a local http.server, NOT Azure). The real-TPM checks are in
tests/integration/test_attestation_server.py."""

from __future__ import annotations

import json
import socket
import struct
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from attestation_server import imds, tls
from attestation_server import tpm as T
from attestation_server.platforms.base import der_prefix as _der_prefix
from attestation_server.server import _body_tpm2b
from mithril_client.errors import BadInput
from mithril_client.tpm2 import PcrSelection

SESSION_AREA = b"\x00\x00\x01\x00\x00"  # TPMS_AUTH_RESPONSE: empty nonce, continueSession, empty hmac


def response(params: bytes = b"", handles: tuple[int, ...] = (), sessions: bool = False, rc: int = 0) -> bytes:
    body = b"".join(T.u32(h) for h in handles)
    body += T.u32(len(params)) + params + SESSION_AREA if sessions else params
    if rc:
        body = b""
    return T.u16(T.ST_SESSIONS if sessions else T.ST_NO_SESSIONS) + T.u32(10 + len(body)) + T.u32(rc) + body


class StandInTpm:
    """NOT a TPM: a unix socket that reads commands (size from the header) and sends the next
    canned response; records every command. A canned entry may be raw bytes, sent as is."""

    def __init__(self, path: Path, responses: list[bytes]):
        self.path, self.responses, self.commands = path, list(responses), []
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(str(path))
        self.sock.listen()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while self.responses:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                while self.responses:
                    header = conn.recv(10, socket.MSG_WAITALL)
                    if len(header) < 10:
                        break
                    size = struct.unpack(">I", header[2:6])[0]
                    self.commands.append(header + conn.recv(size - 10, socket.MSG_WAITALL))
                    conn.sendall(self.responses.pop(0))

    @property
    def spec(self) -> str:
        return f"swtpm:{self.path}"

    def codes(self) -> list[int]:
        return [struct.unpack(">I", c[6:10])[0] for c in self.commands]

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def stand_in(tmp_path):
    made = []

    def make(*responses: bytes) -> StandInTpm:
        s = StandInTpm(tmp_path / f"tpm{len(made)}.sock", list(responses))
        made.append(s)
        return s

    yield make
    for s in made:
        s.close()


def digests(values: list[bytes]) -> bytes:
    return T.u32(len(values)) + b"".join(T.tpm2b(v) for v in values)


# ---------------------------------------------------------------------------- marshalling

def test_primitives():
    assert T.u16(0x1234) + T.u32(0xDEADBEEF) + T.u8(7) == bytes.fromhex("1234deadbeef07")
    assert T.tpm2b(b"ab") == b"\x00\x02ab"
    with pytest.raises(ValueError):
        T.tpm2b(bytes(0x10000))


def test_pcr_selection_round_trip():
    raw = T.pcr_selection(T.ALG_SHA256, [0, 7, 8, 15, 23])
    # TPML_PCR_SELECTION: count 1, sha256, sizeofSelect 3, bitmap (PCR n = bit n % 8 of byte n // 8)
    assert raw == bytes.fromhex("00000001" "000b" "03" "818180")
    assert T.Reader(raw, "test").pcr_selection() == (PcrSelection("sha256", (0, 7, 8, 15, 23)),)


def test_templates_parse_as_tpmt_public():
    """The AK template has the fields mithril_client.tpm2 reads from a TPM2B_PUBLIC, in order."""
    r = T.Reader(T.AK_TEMPLATE, "AK")
    assert (r.u16(), r.u16()) == (T.ALG_ECC, T.ALG_SHA256)
    assert r.u32() == 0x00050472  # fixedTPM|fixedParent|sensitiveDataOrigin|userWithAuth|noDA|restricted|sign
    assert r.tpm2b() == b""
    assert (r.u16(), r.u16(), r.u16(), r.u16(), r.u16()) == (T.ALG_NULL, T.ALG_ECDSA, T.ALG_SHA256,
                                                             T.ECC_NIST_P256, T.ALG_NULL)
    assert (r.tpm2b(), r.tpm2b(), r.rest()) == (b"", b"", b"")
    r = T.Reader(T.EK_TEMPLATE, "EK")
    assert (r.u16(), r.u16(), r.u32()) == (T.ALG_RSA, T.ALG_SHA256, 0x000300B2)  # TCG EK profile L-1
    assert r.tpm2b() == T.EK_POLICY
    assert (r.u16(), r.u16(), r.u16(), r.u16(), r.u16(), r.u32()) == (T.ALG_AES, 128, T.ALG_CFB, T.ALG_NULL, 2048, 0)
    assert r.tpm2b() == bytes(256) and r.rest() == b""


# ---------------------------------------------------------------------------- commands against the stand-in

def test_pcr_read_loops_over_eight_digest_answers(stand_in):
    values = [bytes([i]) * 32 for i in range(16)]
    tpm = stand_in(
        response(T.u32(1) + T.pcr_selection(T.ALG_SHA256, range(8)) + digests(values[:8])),
        response(T.u32(1) + T.pcr_selection(T.ALG_SHA256, range(8, 16)) + digests(values[8:])),
    )
    with T.Tpm(tpm.spec) as t:
        got = t.pcr_read(T.ALG_SHA256, range(16))
    assert got == dict(enumerate(values))
    assert tpm.codes() == [T.COMMANDS["PCR_Read"]] * 2
    assert tpm.commands[0][10:] == T.pcr_selection(T.ALG_SHA256, range(16))
    assert tpm.commands[1][10:] == T.pcr_selection(T.ALG_SHA256, range(8, 16))  # only what was missing


def test_pcr_read_of_an_unallocated_bank_fails_instead_of_looping(stand_in):
    tpm = stand_in(response(T.u32(1) + T.u32(0) + digests([])))
    with T.Tpm(tpm.spec) as t, pytest.raises(T.TpmError, match="is the bank allocated"):
        t.pcr_read(T.ALG_SHA256, [15])


def test_quote_reads_parameters_only_up_to_parameter_size(stand_in):
    attest, signature = b"\xffTCG-attest", b"\x00\x18signature"
    tpm = stand_in(response(T.tpm2b(attest) + signature, sessions=True))
    with T.Tpm(tpm.spec) as t:
        assert t.quote(0x80000000, b"n" * 32, T.ALG_SHA256, range(16)) == (attest, signature)
    command = tpm.commands[0]
    tag, size, code = struct.unpack(">HII", command[:10])
    assert (tag, size, code) == (T.ST_SESSIONS, len(command), T.COMMANDS["Quote"])
    assert command[10:14] == T.u32(0x80000000)  # signHandle
    auth = T.PASSWORD.marshal()
    assert command[14:18 + len(auth)] == T.u32(len(auth)) + auth
    assert command[18 + len(auth):] == T.tpm2b(b"n" * 32) + T.u16(T.ALG_NULL) + T.pcr_selection(T.ALG_SHA256, range(16))


def test_error_response_names_command_and_code(stand_in):
    tpm = stand_in(response(rc=0x1DF))
    with T.Tpm(tpm.spec) as t, pytest.raises(T.TpmError) as e:
        t.activate_credential(0x80000000, 0x81010001, 0x03000000, b"blob", b"secret")
    assert str(e.value) == "TPM2_ActivateCredential failed: response code 0x1df"
    assert (e.value.rc, e.value.base, e.value.parameter) == (0x1DF, 0x09F, 1)  # TPM_RC_INTEGRITY, parameter 1
    command = tpm.commands[0]
    area = T.PASSWORD.marshal() + T.Auth(0x03000000).marshal()  # AK by password, EK by the policy session
    assert command[18:22 + len(area)] == T.u32(len(area)) + area


def test_handle_error_has_no_parameter_number():
    e = T.TpmError("ReadPublic", 0x18B)
    assert (e.base, e.parameter) == (T.RC_HANDLE, None)


def test_try_again_warnings_are_resubmitted(stand_in):
    ok = response(T.u32(1) + T.pcr_selection(T.ALG_SHA256, [15]) + digests([b"\x01" * 32]))
    tpm = stand_in(response(rc=0x922), response(rc=0x908), ok)
    with T.Tpm(tpm.spec) as t:
        assert t.pcr_read(T.ALG_SHA256, [15]) == {15: b"\x01" * 32}
    assert len(tpm.commands) == 3 and len(set(tpm.commands)) == 1


@pytest.mark.parametrize("raw, match", [
    (b"\x80\x01\x00\x00", "response: truncated"),  # shorter than a header
    (T.u16(T.ST_NO_SESSIONS) + T.u32(40) + T.u32(0), "size field says 40 bytes, 10 arrived"),
    (T.u16(T.ST_NO_SESSIONS) + T.u32(10) + T.u32(0), "response: truncated"),  # no parameters at all
    (T.u16(T.ST_NO_SESSIONS) + T.u32(13) + T.u32(0) + b"\x00\x09a", "response: truncated"),  # TPM2B too short
])
def test_broken_responses_raise_tpm_error(stand_in, raw, match):
    tpm = stand_in(raw)
    with T.Tpm(tpm.spec) as t, pytest.raises(T.TpmError, match=match):
        t.read_public(0x81000003)


def test_nv_read_in_chunks_with_the_auth_the_index_allows(stand_in):
    data = bytes(range(256)) * 10  # 2560 bytes: 1024 + 1024 + 512
    nv_public = T.u32(0x01C101D0) + T.u16(T.ALG_SHA256) + T.u32(T.NV_OWNERREAD) + T.tpm2b(b"") + T.u16(len(data))
    tpm = stand_in(
        response(T.tpm2b(nv_public) + T.tpm2b(b"\x00\x0bname")),
        response(b"\x00" + T.u32(T.CAP_TPM_PROPERTIES) + T.u32(1) + T.u32(T.PT_NV_BUFFER_MAX) + T.u32(1024)),
        response(T.tpm2b(data[:1024]), sessions=True),
        response(T.tpm2b(data[1024:2048]), sessions=True),
        response(T.tpm2b(data[2048:]), sessions=True),
    )
    with T.Tpm(tpm.spec) as t:
        assert t.nv_read(0x01C101D0) == data
    reads = tpm.commands[2:]
    for command, (size, offset) in zip(reads, [(1024, 0), (1024, 1024), (512, 2048)]):
        assert command[10:18] == T.u32(T.RH_OWNER) + T.u32(0x01C101D0)  # owner-readable only
        assert command[-4:] == T.u16(size) + T.u16(offset)


def test_nv_read_with_its_own_auth(stand_in):
    nv_public = T.u32(0x01C00002) + T.u16(T.ALG_SHA256) + T.u32(T.NV_AUTHREAD | T.NV_OWNERREAD) + T.tpm2b(b"") + T.u16(3)
    tpm = stand_in(
        response(T.tpm2b(nv_public) + T.tpm2b(b"")),
        response(b"\x00" + T.u32(T.CAP_TPM_PROPERTIES) + T.u32(1) + T.u32(T.PT_NV_BUFFER_MAX) + T.u32(1024)),
        response(T.tpm2b(b"abc"), sessions=True),
    )
    with T.Tpm(tpm.spec) as t:
        assert t.nv_read(0x01C00002) == b"abc"
    assert tpm.commands[2][10:18] == T.u32(0x01C00002) * 2


def test_created_objects_and_sessions_are_flushed_even_on_error(stand_in):
    public = T.tpm2b(T.AK_TEMPLATE)
    tpm = stand_in(
        response(public, handles=(0x80000001,), sessions=True),  # CreatePrimary
        response(T.tpm2b(b"n" * 32), handles=(0x03000000,)),  # StartAuthSession
        response(rc=0x98E),  # PolicySecret fails
        response(), response(),  # FlushContext x 2
    )
    with pytest.raises(T.TpmError, match="PolicySecret"), T.Tpm(tpm.spec) as t:
        assert t.create_primary(T.RH_ENDORSEMENT, T.AK_TEMPLATE) == T.Key(0x80000001, public)
        t.policy_secret(T.RH_ENDORSEMENT, t.start_policy_session())
    flushes = [c for c in tpm.commands if struct.unpack(">I", c[6:10])[0] == T.COMMANDS["FlushContext"]]
    assert [c[10:] for c in flushes] == [T.u32(0x03000000), T.u32(0x80000001)]


def test_bad_spec_and_unreachable_tpm(tmp_path):
    with pytest.raises(ValueError, match="device path"):
        T.Tpm("tpm0")
    with pytest.raises(T.TpmError, match="TPM open failed"), T.Tpm(f"swtpm:{tmp_path}/absent.sock"):
        pass


# ---------------------------------------------------------------------------- server input helpers

def test_der_prefix_drops_index_padding():
    _, cert = tls.make_ca()
    der = cert.public_bytes(serialization.Encoding.DER)
    assert _der_prefix(der + bytes(4096 - len(der))) == der  # Azure's AK cert index: 4096 bytes, zero-padded
    assert x509.load_der_x509_certificate(_der_prefix(der)) == cert


@pytest.mark.parametrize("value, match", [
    (None, "base64 string"), (17, "base64 string"), ("not base64!", "not valid base64"),
    ("AAA=", "an empty TPM2B"),  # 2 bytes: a size of 0 and nothing
    ("AAUAAA==", "truncated: secret needs 5 bytes"),  # size 5, two bytes follow
    ("AAFhYg==", "1 unexpected bytes after the secret"),  # size 1, two bytes follow
])
def test_activation_body_fields(value, match):
    with pytest.raises(BadInput, match=match):
        _body_tpm2b({"secret": value}, "secret")


def test_activation_body_field_ok():
    assert _body_tpm2b({"secret": "AAJhYg=="}, "secret") == b"ab"


# ---------------------------------------------------------------------------- IMDS THIM client

VCEK = "-----BEGIN CERTIFICATE-----\nVCEK stand-in\n-----END CERTIFICATE-----\n"
CHAIN = "-----BEGIN CERTIFICATE-----\nASK stand-in\n-----END CERTIFICATE-----\n" \
        "-----BEGIN CERTIFICATE-----\nARK stand-in\n-----END CERTIFICATE-----\n"


@pytest.fixture
def imds_stand_in():
    """NOT Azure IMDS: a local http.server answering THIM's path with (status, body) set per test,
    recording the request headers."""
    state = {"answer": (200, b""), "headers": []}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 -- http.server's name
            state["headers"].append(dict(self.headers))
            status, body = state["answer"] if self.path == "/metadata/THIM/amd/certification" else (404, b"")
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    state["url"] = f"http://127.0.0.1:{server.server_address[1]}/metadata/THIM/amd/certification"
    yield state
    server.shutdown()
    server.server_close()


def test_thim_answer_becomes_one_pem_bundle(imds_stand_in):
    imds_stand_in["answer"] = (200, json.dumps({"vcekCert": VCEK, "tcbm": "DB18000000000004",
                                                "certificateChain": CHAIN, "cacheControl": "86400"}).encode())
    assert imds.vcek_chain(imds_stand_in["url"]) == (VCEK + CHAIN).encode()
    assert imds_stand_in["headers"][0]["Metadata"] == "true"


@pytest.mark.parametrize("status, body, match", [
    (500, b"{}", "HTTP Error 500"),
    (200, b"<html>", "not JSON"),
    (200, b"[]", "vcekCert is missing"),
    (200, json.dumps({"vcekCert": VCEK}).encode(), "certificateChain is missing"),
    (200, json.dumps({"vcekCert": "abc", "certificateChain": CHAIN}).encode(), "vcekCert is missing or not a PEM"),
    (200, b" " * (imds.MAX_ANSWER + 1), "larger than"),
], ids=["http-500", "html", "list", "no-chain", "not-pem", "too-large"])
def test_thim_failures(imds_stand_in, status, body, match):
    imds_stand_in["answer"] = (status, body)
    with pytest.raises(imds.ImdsError, match=match):
        imds.vcek_chain(imds_stand_in["url"])


def test_thim_unreachable(tmp_path):
    with pytest.raises(imds.ImdsError, match="THIM"):
        imds.vcek_chain("http://127.0.0.1:1/metadata/THIM/amd/certification")


# ---------------------------------------------------------------------------- the VCEK chain cache (issue 19)

TCB_A, TCB_B = bytes.fromhex("04000000000018db"), bytes.fromhex("04000000000019dc")


def test_a_flood_of_requests_is_one_imds_call(imds_stand_in):
    """Before: every GET /attestation asked IMDS. Now one call per TCB, however many clients."""
    imds_stand_in["answer"] = (200, json.dumps({"vcekCert": VCEK, "certificateChain": CHAIN}).encode())
    cache = imds.VcekCache(imds_stand_in["url"])
    results = []
    threads = [threading.Thread(target=lambda: results.append(cache.get(TCB_A))) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [(VCEK + CHAIN).encode()] * 20
    assert len(imds_stand_in["headers"]) == 1


def test_refresh_in_the_background_and_on_a_new_tcb():
    calls, clock, later = [], [0.0], []

    def fetch(url):
        calls.append(url)
        return f"chain {len(calls)}".encode()

    cache = imds.VcekCache("thim", fetch=fetch, refresh=100.0, clock=lambda: clock[0], spawn=later.append)
    assert cache.get(TCB_A) == b"chain 1" and cache.get(TCB_A) == b"chain 1" and len(calls) == 1
    clock[0] = 150.0  # due: the request is answered from the cache, the refresh runs apart
    assert cache.get(TCB_A) == b"chain 1" and len(calls) == 1 and len(later) == 1
    assert cache.get(TCB_A) == b"chain 1" and len(later) == 1  # one refresh at a time
    later.pop()()
    assert len(calls) == 2 and cache.get(TCB_A) == b"chain 2" and not later
    # the report's TCB changed (the host was updated): the chain of the old TCB is useless
    assert cache.get(TCB_B) == b"chain 3" and len(calls) == 3


def test_a_failed_refresh_keeps_the_cached_chain():
    answers, clock, later = [b"chain 1", imds.ImdsError("THIM down")], [0.0], []

    def fetch(url):
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    logged = []
    cache = imds.VcekCache("thim", fetch=fetch, refresh=10.0, clock=lambda: clock[0], spawn=later.append,
                           log=logged.append)
    assert cache.get(TCB_A) == b"chain 1"
    clock[0] = 20.0
    cache.get(TCB_A)
    later.pop()()
    assert cache.get(TCB_A) == b"chain 1" and "THIM down" in logged[0]
    with pytest.raises(imds.ImdsError):  # nothing cached for a new TCB and IMDS is down: the request fails
        imds.VcekCache("thim", fetch=lambda url: (_ for _ in ()).throw(imds.ImdsError("down"))).get(TCB_A)
