"""`connect` and AttestedSession against the real serving stack (tests/stack.py: swtpm with a
certified EK, the attestation server on Debian's Python, Debian's Caddy, a static app), no VM.

The expected PCRs come from tpm2_pcrread; the refusals are the point: other measurements, a
missing or foreign EK CA, a TLS-terminating proxy in between (also in the middle of a session), a
replayed evidence document.
"""

from __future__ import annotations

import json
import shutil
import ssl
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from mithril_client import AttestationFailed, AttestedSession
from tests.conftest import REPO, mb, mc
from tests.stack import PAGE, Stack, TlsProxy, free_port, need_stack


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    need_stack()
    s = Stack(tmp_path_factory.mktemp("stack"))
    try:
        yield s.start()
    finally:
        s.stop()


def rows(stderr: str) -> dict[str, str]:
    """{check: result} from the table `connect` prints on stderr."""
    out = {}
    for line in stderr.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[-1] in ("ok", "MISMATCH", "warn", "missing") or "UNVERIFIED" in line:
            out[line[:16].strip()] = "UNVERIFIED" if "UNVERIFIED" in line else parts[-1]
    return out


def connect(stack: Stack, *extra, url: str | None = None, measurements: Path | None = None, ek_ca: bool = True):
    args = ["connect", url or stack.url + "/", "--measurements", measurements or stack.measurements]
    if ek_ca:
        args += ["--ek-ca", stack.work / "ek-ca.pem"]
    return mb(*args, *extra, timeout=300)


def test_connect_returns_the_page_over_the_attested_channel(stack):
    res = connect(stack)
    assert res.returncode == 0, res.stderr
    assert res.stdout.encode() == PAGE
    r = rows(res.stderr)
    for check in ("signature", "nonce", "pcr digest", "PCR 15", "ek cert chain", "ak activation", "ak",
                  "tls certificate"):
        assert r.get(check) == "ok", res.stderr
    assert "ATTESTED" in res.stderr


def test_json_report(stack):
    res = connect(stack, "--json")
    assert res.returncode == 0, res.stderr
    data = json.loads(res.stdout)
    assert data["attested"] and data["status"] == 200 and data["body"].encode() == PAGE
    assert {r["check"] for r in data["rows"]} >= {"ak", "tls certificate", "PCR 15"}


def test_an_http_error_of_the_attested_server_exits_22_with_rows_and_body(stack):
    """As `curl --fail`: the server is attested, but the app answers 400; the table and the body
    are still printed, and the exit status says it (the stand-in app answers 400 to a bad POST)."""
    res = connect(stack, "--data", '{"no": "prompt"}')
    assert res.returncode == 22, res.stderr
    assert res.stdout == '{"error": "bad request"}'
    assert rows(res.stderr)["tls certificate"] == "ok" and "ATTESTED" in res.stderr and "HTTP 400" in res.stderr
    res = connect(stack, "--data", "{}", "--json")
    assert res.returncode == 22 and json.loads(res.stdout)["status"] == 400, res.stderr


def test_other_measurements_are_refused_naming_the_pcr(stack, tmp_path):
    other = stack.write_measurements(tmp_path / "m.json", stack.pcrs, pcr15="ab" * 32)
    res = connect(stack, measurements=other)
    assert res.returncode == 1, res.stderr
    assert rows(res.stderr)["PCR 15"] == "MISMATCH" and res.stdout == ""
    assert "ATTESTATION FAILED" in res.stderr and "PCR 15" in res.stderr.splitlines()[-1]


def test_without_the_ek_ca_the_ak_is_not_trusted(stack, tmp_path):
    # run outside any project: there is no run record to find the EK CA in
    res = mb("connect", stack.url + "/", "--measurements", stack.measurements, cwd=tmp_path, timeout=300)
    assert res.returncode == 1, res.stderr
    assert rows(res.stderr)["ek cert chain"] == "UNVERIFIED" and rows(res.stderr)["ak"] == "MISMATCH"


def test_a_foreign_ek_ca_is_refused(stack, tmp_path):
    from pipeline.swtpm import manufacture

    other = tmp_path / "other-ca.pem"
    other.write_bytes(manufacture(tmp_path / "tpm", tmp_path / "ca"))
    res = mb("connect", stack.url + "/", "--measurements", stack.measurements, "--ek-ca", other, timeout=300)
    assert res.returncode == 1, res.stderr
    assert rows(res.stderr)["ek cert chain"] == "MISMATCH"


def test_a_tls_proxy_with_another_certificate_is_refused(stack, tmp_path):
    proxy = TlsProxy(stack.port, tmp_path)
    try:
        res = connect(stack, url=f"https://127.0.0.1:{proxy.port}/")
    finally:
        proxy.close()
    assert res.returncode == 1, res.stderr
    r = rows(res.stderr)
    assert r["tls certificate"] == "MISMATCH"
    assert r["ak"] == "ok" and r["PCR 15"] == "ok"  # the relayed evidence itself is genuine
    assert res.stdout == ""


def fetch_evidence(stack: Stack, nonce: bytes) -> bytes:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    with urllib.request.urlopen(f"{stack.url}/attestation?nonce={nonce.hex()}", context=ctx, timeout=60) as r:
        return r.read()


def test_replayed_evidence_is_refused(stack, tmp_path):
    doc = tmp_path / "evidence.json"
    doc.write_bytes(fetch_evidence(stack, b"\x01" * 32))
    base = ["attest", "verify", "--evidence", doc, "--measurements", stack.measurements,
            "--ek-ca", stack.work / "ek-ca.pem", "--json"]
    replay = mb(*base, "--nonce", "02" * 32)
    assert replay.returncode == 1, replay.stderr
    r = {x["check"]: x["result"] for x in json.loads(replay.stdout)["rows"]}
    assert r["nonce"] == "MISMATCH"
    # the same document with its own nonce passes every check that an offline file can:
    # credential activation needs the live server, so the AK stays unverified and exit is 1
    same = mb(*base, "--nonce", "01" * 32)
    r = {x["check"]: x["result"] for x in json.loads(same.stdout)["rows"]}
    assert same.returncode == 1 and r["nonce"] == "ok" and r["PCR 15"] == "ok" and r["ek cert chain"] == "ok"
    assert r["ak activation"].startswith("UNVERIFIED") and r["ak"] == "MISMATCH"


def test_session_reattests_each_connection_and_pins_each_to_its_attested_ca(stack, tmp_path):
    relay = TlsProxy(stack.port, tmp_path, mitm=False)
    try:
        with AttestedSession(f"https://127.0.0.1:{relay.port}", stack.measurements, ek_ca=stack.ek_ca) as s:
            assert s.get("/").body == PAGE
            first = s.report.evidence.nonce
            assert s.get("/").body == PAGE and s.report.evidence.nonce == first  # same connection, attested once
            s.close()  # a new connection: a new nonce, a new verification
            assert s.get("/").body == PAGE
            assert s.report.evidence.nonce != first
            s.close()
            relay.mitm = True  # the next connection ends at another certificate
            with pytest.raises(AttestationFailed) as e:
                s.get("/")
            assert {r.check for r in e.value.report.all_rows if r.failed} == {"tls certificate"}
    finally:
        relay.close()


def test_unreachable_is_exit_3(stack):
    res = mb("connect", f"https://127.0.0.1:{free_port()}/", "--measurements", stack.measurements, timeout=60)
    assert res.returncode == 3 and len(res.stderr.strip().splitlines()) == 1, res.stderr


def test_evidence_matches_the_published_schema(stack):
    import jsonschema

    from tests.conftest import REPO

    schema = json.loads((REPO / "docs/evidence.schema.json").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    doc = json.loads(fetch_evidence(stack, b"\x07" * 32))
    jsonschema.validate(doc, schema)
    assert set(doc) >= {"ek_cert", "tls_ca", "ak_public"} and sorted(doc["pcrs"]["sha256"], key=int) == \
        [str(i) for i in range(16)]
    for bad in ({**doc, "nonce": "abc"}, {**doc, "version": 2}, {**doc, "surprise": 1}):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, schema)


@pytest.mark.parametrize("mutate", [
    lambda d, raw: raw[: len(raw) // 2],  # truncated
    lambda d, raw: b"\xff\xfe" + raw,  # not UTF-8
    lambda d, raw: json.dumps({**d, "quote": 5}).encode(),
    lambda d, raw: json.dumps({**d, "pcrs": []}).encode(),
    lambda d, raw: json.dumps({**d, "nonce": 12}).encode(),
    lambda d, raw: json.dumps({**d, "tls_ca": "-----BEGIN CERTIFICATE-----\n" + "A" * (1 << 20)}).encode(),
    lambda d, raw: json.dumps({**d, "quote": d["quote"][:24]}).encode(),  # valid base64, truncated TPMS_ATTEST
    lambda d, raw: json.dumps({**d, "ak_public": "AAAA"}).encode(),
    lambda d, raw: json.dumps({**d, "ek_cert": "-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n"}).encode(),
    lambda d, raw: json.dumps([d]).encode(),
], ids=["truncated", "not-utf8", "quote-int", "pcrs-list", "nonce-int", "field-over-1MiB", "quote-truncated",
        "ak-public-garbage", "ek-cert-garbage", "array"])
def test_malformed_evidence_is_one_line_exit_2(stack, tmp_path, mutate):
    raw = fetch_evidence(stack, b"\x05" * 32)
    bad = tmp_path / "bad.json"
    bad.write_bytes(mutate(json.loads(raw), raw))
    res = mb("attest", "verify", "--evidence", bad, "--nonce", "05" * 32, "--measurements", stack.measurements,
             "--ek-ca", stack.work / "ek-ca.pem")
    assert res.returncode == 2, res.stdout + res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and "Traceback" not in res.stderr, res.stderr
    assert str(bad) in res.stderr or "evidence" in res.stderr


def test_triton_generate_helper_over_the_attested_session(stack):
    from mithril_client.errors import BadInput
    from mithril_client.triton import generate

    with AttestedSession(stack.url, stack.measurements, ek_ca=stack.ek_ca) as s:
        assert generate(s, "What is attestation?", max_tokens=7) == "echo: What is"
        with pytest.raises(BadInput, match="HTTP 400"):
            generate(s, "x", model="other")


def test_a_relay_serving_its_own_ca_is_refused_even_without_pcr15_in_the_file(stack, tmp_path):
    """The relay of issue 19: TLS ends at the relay, whose own certificate replaces tls_ca in the
    genuine evidence; nonce and credential activation go through to the real server. Only PCR 15
    (the CA the image measured) tells, and a measurements.json without it cannot waive that."""
    doc = json.loads(stack.measurements.read_text())
    for name, change in (("no-pcr15", None), ("warn-pcr15", "warn"), ("as-built", "enforce")):
        m = json.loads(json.dumps(doc))
        if change is None:
            del m["pcrs"]["15"]
        else:
            m["pcrs"]["15"]["policy"] = change
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(m))
        relay = TlsProxy(stack.port, tmp_path, rewrite_tls_ca=True)
        try:
            res = connect(stack, "--json", url=f"https://127.0.0.1:{relay.port}/", measurements=path)
        finally:
            relay.close()
        assert res.returncode == 1, (name, res.stderr)
        out = json.loads(res.stdout)
        r = {x["check"]: x["result"] for x in out["rows"]}
        assert not out["attested"] and "body" not in out
        assert r["tls binding"] == "MISMATCH" and r["tls certificate"] == "ok", (name, r)  # the relay's CA, presented
        assert r["ak"] == "ok" and r["ak activation"] == "ok", (name, r)  # the genuine TPM answered through it


def readme_snippet() -> str:
    """The Python block of README "Verify a server before you send it anything", as printed."""
    text = (REPO / "README.md").read_text()
    section = text[text.index("## Verify a server before you send it anything"):]
    assert section.index("pip install mithril-client") < section.index("```python")
    return section[section.index("```python\n") + len("```python\n"):section.index("\n```", section.index("```python"))]


def test_the_readme_first_lines_attest_and_query_the_server(stack, tmp_path):
    """The README's first lines, run as a user's script (in a folder holding measurements.json),
    against the serving stack. Two changes only, both said in the README: this server's address,
    and ek_ca= (a local qemu TPM's per-boot EK CA; Azure's roots ship with the client)."""
    snippet = readme_snippet()
    assert len(snippet.splitlines()) == 5
    url, call = '"https://203.0.113.7"', 'measurements="measurements.json")'
    assert url in snippet and call in snippet
    script = snippet.replace(url, repr(stack.url)).replace(call, call[:-1] + ', ek_ca="ek-ca.pem")')
    (tmp_path / "ek-ca.pem").write_bytes(stack.ek_ca)
    shutil.copy(stack.measurements, tmp_path / "measurements.json")
    res = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                         check=False)
    assert res.returncode == 0 and res.stdout == "echo: What is remote attestation?\n", res.stderr
    # other measurements: refused before the prompt is sent
    stack.write_measurements(tmp_path / "measurements.json", stack.pcrs, pcr15="ab" * 32)
    res = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                         check=False)
    assert res.returncode == 1 and res.stdout == "" and "AttestationFailed" in res.stderr and "PCR 15" in res.stderr


def test_mithril_client_connect_gives_the_rows_of_mithril_build_connect(stack, tmp_path):
    args = [stack.url + "/", "--measurements", stack.measurements, "--ek-ca", stack.work / "ek-ca.pem"]
    client, build = mc("connect", *args, "--json", timeout=300), mb("connect", *args, "--json", timeout=300)
    assert client.returncode == build.returncode == 0, client.stderr
    c, b = json.loads(client.stdout), json.loads(build.stdout)
    assert c["body"].encode() == PAGE and c["attested"] and c["status"] == 200
    assert [(r["check"], r["result"]) for r in c["rows"]] == [(r["check"], r["result"]) for r in b["rows"]]
    res = mc("connect", *args, timeout=300)  # the table on stderr, the page on stdout
    assert res.returncode == 0 and res.stdout.encode() == PAGE and rows(res.stderr)["tls certificate"] == "ok"
    other = stack.write_measurements(tmp_path / "m.json", stack.pcrs, pcr15="ab" * 32)
    res = mc("connect", stack.url + "/", "--measurements", other, "--ek-ca", stack.work / "ek-ca.pem", timeout=300)
    assert res.returncode == 1 and res.stdout == "" and rows(res.stderr)["PCR 15"] == "MISMATCH"
    res = mc("connect", *args, "--data", "{}", timeout=300)  # the app answers 400: attested, exit 22
    assert res.returncode == 22 and "HTTP 400" in res.stderr
