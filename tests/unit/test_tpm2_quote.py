"""Quote verification with REAL quotes made here by swtpm + tpm2-tools, tampered copies, and bad input."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from pipeline.errors import BadInput
from mithril_client import tpm2 as q
from mithril_client.measurements import parse_measurements
from mithril_client.tpm2 import extend
from pipeline.swtpm import Swtpm
from tests.conftest import mb, need

NONCE = "5eed0123456789abcdef0123456789ab"  # 16 bytes: the least a nonce may have (tpm2.NONCE_MIN)
ROOTHASH = hashlib.sha256(b"app disk").hexdigest()
CA_PEM = b"-----BEGIN CERTIFICATE-----\nMIIBfake\n-----END CERTIFICATE-----\n"
PCR4 = hashlib.sha256(b"uki").hexdigest()
PCR15_SENTINEL = extend(extend(bytes(32), bytes.fromhex(ROOTHASH)), bytes(32)).hex()
SELECTION = "sha256:0,1,2,3,4,7,15"


@pytest.fixture(scope="module")
def tpm(tmp_path_factory):
    """A swtpm with PCR 4 and PCR 15 (roothash, zero sentinel, CA) extended, three AKs and quotes."""
    need("swtpm", "tpm2_quote", "tpm2_createak", "tpm2_startup")
    d = tmp_path_factory.mktemp("tpm")
    with Swtpm(d / "state", for_qemu=False) as t:
        t.tool(["tpm2_startup", "-c"])
        t.tool(["tpm2_createek", "-c", d / "ek.ctx", "-G", "rsa", "-u", d / "ek.pub"])
        for name, alg, scheme in (("rsa", "rsa", "rsassa"), ("ecc", "ecc", "ecdsa"), ("pss", "rsa", "rsapss"),
                                  ("other", "rsa", "rsassa")):
            t.tool(["tpm2_createak", "-C", d / "ek.ctx", "-c", d / f"{name}.ctx", "-G", alg, "-g", "sha256",
                    "-s", scheme, "-u", d / f"{name}.pub.tss"])
            # the same key once more in PEM
            t.tool(["tpm2_readpublic", "-c", d / f"{name}.ctx", "-f", "pem", "-o", d / f"{name}.pub.pem"])
        t.tool(["tpm2_pcrextend", f"4:sha256={PCR4}"])
        t.tool(["tpm2_pcrextend", f"15:sha256={ROOTHASH}"])
        t.tool(["tpm2_pcrextend", f"15:sha256={'00' * 32}"])
        t.tool(["tpm2_pcrextend", f"15:sha256={hashlib.sha256(CA_PEM).hexdigest()}"])
        for name in ("rsa", "ecc", "pss"):
            extra = ["--scheme", "rsapss"] if name == "pss" else []
            out = t.tool(["tpm2_quote", "-c", d / f"{name}.ctx", "-l", SELECTION, "-q", NONCE, "-g", "sha256",
                          "-m", d / f"{name}.msg", "-s", d / f"{name}.sig", "-o", d / f"{name}.pcrs", *extra])
            (d / f"{name}.yaml").write_bytes(out.stdout)  # tpm2_quote's YAML, with the PCR values
    (d / "ca.pem").write_bytes(CA_PEM)
    return d


def measurements(tpm: Path, **changes) -> Path:
    """measurements.json that matches the swtpm's PCRs (PCR 15 before the CA step)."""
    zero = "00" * 32
    doc = {"version": 1, "platform": "qemu", "mode": "production",
           "pcrs": {"0": {"expected": [zero], "policy": "warn"},
                    "4": {"expected": [hashlib.sha256(bytes(32) + bytes.fromhex(PCR4)).hexdigest()],
                          "policy": "enforce"},
                    "7": {"expected": [zero], "policy": "enforce"},
                    "15": {"expected": [PCR15_SENTINEL], "policy": "enforce"}},
           "application_disk": {"roothash": ROOTHASH}}
    for key, value in changes.items():
        if key == "mode":
            doc["mode"] = value
        else:
            doc["pcrs"][key.removeprefix("pcr")] = value
    path = tpm / f"m-{abs(hash(json.dumps(doc, sort_keys=True)))}.json"
    path.write_text(json.dumps(doc))
    return path


def verify(tpm: Path, name="rsa", *, key=None, nonce=NONCE, pcrs=None, msg=None, sig=None, m=None, ca=True,
           extra=()):
    args = ["attest", "verify", "--quote", msg or tpm / f"{name}.msg", "--signature", sig or tpm / f"{name}.sig",
            "--pcrs", pcrs or tpm / f"{name}.pcrs", "--ak-pub", key or tpm / f"{name}.pub.tss",
            "--nonce", nonce, "--measurements", m or measurements(tpm), "--json", *extra]
    if ca:
        args += ["--ca-pem", tpm / "ca.pem"]
    return mb(*args, timeout=60)


def rows(res) -> dict[str, dict]:
    return {r["check"]: r for r in json.loads(res.stdout)["rows"]}


def quote_checks_pass(res) -> bool:
    """Every check passed but `ak`: file mode has a bare AK key, which ties the quote to no TPM,
    so the verdict is always exit 1 with the `ak` row as the only failure."""
    failed = [r["check"] for r in json.loads(res.stdout)["rows"] if r["policy"] == "enforce" and r["result"] != "ok"]
    return res.returncode == 1 and failed == ["ak"]


def one_line_error(res, code=2):
    assert res.returncode == code, res.stdout + res.stderr
    assert "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1, res.stderr
    return res.stderr


@pytest.mark.parametrize("name", ["rsa", "ecc", "pss"])
@pytest.mark.parametrize("keyform", ["tss", "pem"])
def test_real_quote_verifies(tpm, name, keyform):
    res = verify(tpm, name, key=tpm / f"{name}.pub.{keyform}")
    assert quote_checks_pass(res), res.stdout + res.stderr
    r = rows(res)
    assert all(r[c]["result"] == "ok" for c in ("signature", "nonce", "pcr digest", "PCR 4", "PCR 7", "PCR 15"))
    assert r["PCR 0"]["result"] == "ok"


def test_yaml_pcr_values_from_tpm2_quote_stdout(tpm):
    assert quote_checks_pass(verify(tpm, "rsa", pcrs=tpm / "rsa.yaml"))


def test_library_parses_fields(tpm):
    quote = q.parse_quote((tpm / "ecc.msg").read_bytes())
    assert quote.extra_data == bytes.fromhex(NONCE)
    assert quote.selections == (q.PcrSelection("sha256", (0, 1, 2, 3, 4, 7, 15)),)
    sig = q.parse_signature((tpm / "ecc.sig").read_bytes())
    assert (sig.scheme, sig.hash) == ("ecdsa", "sha256")
    values = q.parse_pcr_file((tpm / "ecc.pcrs").read_bytes(), "pcrs", quote.selections)
    assert values["sha256"][4].hex() == hashlib.sha256(bytes(32) + bytes.fromhex(PCR4)).hexdigest()
    assert q.pcr_digest(quote.selections, values, "sha256") == quote.pcr_digest


def test_pcr15_needs_the_ca_replay(tpm):
    res = verify(tpm, ca=False)
    assert res.returncode == 1
    assert rows(res)["PCR 15"]["result"] == "MISMATCH"
    other_ca = tpm / "other-ca.pem"
    other_ca.write_bytes(CA_PEM + b"x")
    res = verify(tpm, extra=["--ca-pem", other_ca], ca=False)
    assert res.returncode == 1


def test_changed_pcr_value_fails_the_digest(tpm):
    data = bytearray((tpm / "rsa.pcrs").read_bytes())
    data[4 + 16 * 8 + 4 + 4 + 2] ^= 1  # first byte of the first digest (PCR 0)
    bad = tpm / "tampered.pcrs"
    bad.write_bytes(bytes(data))
    res = verify(tpm, pcrs=bad)
    assert res.returncode == 1
    r = rows(res)
    assert r["pcr digest"]["result"] == "MISMATCH"
    assert r["PCR 4"]["result"] == "missing"  # values not vouched for are never compared


def test_changed_nonce_fails(tpm):
    res = verify(tpm, nonce="00" + NONCE[2:])
    assert res.returncode == 1
    assert rows(res)["nonce"]["result"] == "MISMATCH"
    assert rows(res)["signature"]["result"] == "ok"


def test_changed_quote_byte_fails_the_signature(tpm):
    data = bytearray((tpm / "rsa.msg").read_bytes())
    data[-1] ^= 1  # last byte of pcrDigest
    bad = tpm / "tampered.msg"
    bad.write_bytes(bytes(data))
    res = verify(tpm, msg=bad)
    assert res.returncode == 1
    assert rows(res)["signature"]["result"] == "MISMATCH"


@pytest.mark.parametrize("keyform", ["tss", "pem"])
def test_wrong_key_fails(tpm, keyform):
    res = verify(tpm, key=tpm / f"other.pub.{keyform}")
    assert res.returncode == 1
    assert rows(res)["signature"]["result"] == "MISMATCH"
    res = verify(tpm, "rsa", key=tpm / "ecc.pub.tss")  # ECC key for an RSA signature
    assert res.returncode == 1


def test_measurement_mismatch_enforce_and_warn(tpm):
    other = ["11" * 32]
    res = verify(tpm, m=measurements(tpm, pcr4={"expected": other, "policy": "enforce"}))
    assert res.returncode == 1 and rows(res)["PCR 4"]["result"] == "MISMATCH"
    res = verify(tpm, m=measurements(tpm, pcr4={"expected": other, "policy": "warn"}))
    assert quote_checks_pass(res) and rows(res)["PCR 4"]["result"] == "warn"
    # allow-list: any listed value passes
    good = rows(verify(tpm))["PCR 4"]["actual"]
    assert quote_checks_pass(verify(tpm, m=measurements(tpm, pcr4={"expected": other + [good], "policy": "enforce"})))
    # an enforced PCR that the quote does not cover fails
    res = verify(tpm, m=measurements(tpm, pcr11={"expected": ["00" * 32], "policy": "enforce"}))
    assert res.returncode == 1 and rows(res)["PCR 11"]["result"] == "missing"


def test_debug_measurements_refused_unless_allowed(tpm):
    m = measurements(tpm, mode="debug")
    res = verify(tpm, m=m)
    assert res.returncode == 1
    assert rows(res)["mode"]["result"].startswith("REFUSED")
    assert quote_checks_pass(verify(tpm, m=m, extra=["--allow-debug"]))


def test_text_output_is_a_table(tpm):
    res = mb("attest", "verify", "--quote", tpm / "rsa.msg", "--signature", tpm / "rsa.sig", "--pcrs",
             tpm / "rsa.pcrs", "--ak-pub", tpm / "rsa.pub.pem", "--nonce", NONCE, "--measurements",
             measurements(tpm), "--ca-pem", tpm / "ca.pem")
    assert res.returncode == 1, res.stderr
    assert res.stdout.splitlines()[0].split() == ["CHECK", "EXPECTED", "ACTUAL", "POLICY", "RESULT"]
    assert res.stdout.splitlines()[-2].split()[0] == "ak" and "UNVERIFIED" in res.stdout.splitlines()[-2]
    assert res.stdout.splitlines()[-1] == "QUOTE VERIFICATION FAILED"


# ---------------------------------------------------------------- bad input: one line, exit 2

def test_truncated_quote(tpm):
    bad = tpm / "short.msg"
    bad.write_bytes((tpm / "rsa.msg").read_bytes()[:50])
    err = one_line_error(verify(tpm, msg=bad))
    assert "short.msg" in err and "truncated" in err


def test_truncated_signature_and_pcrs(tpm):
    bad = tpm / "short.sig"
    bad.write_bytes((tpm / "rsa.sig").read_bytes()[:100])
    assert "short.sig" in one_line_error(verify(tpm, sig=bad))
    bad = tpm / "short.pcrs"
    bad.write_bytes((tpm / "rsa.pcrs").read_bytes()[:300])
    assert "short.pcrs" in one_line_error(verify(tpm, pcrs=bad))


def test_unknown_signature_algorithm(tpm):
    data = bytearray((tpm / "rsa.sig").read_bytes())
    data[0:2] = b"\x00\x99"
    bad = tpm / "alg.sig"
    bad.write_bytes(bytes(data))
    assert "unknown or unsupported signature algorithm" in one_line_error(verify(tpm, sig=bad))


def test_not_a_quote(tpm):
    bad = tpm / "notquote.msg"
    bad.write_bytes(b"\x00" * 200)
    assert "TPM_GENERATED_VALUE" in one_line_error(verify(tpm, msg=bad))


def test_malformed_measurements(tpm):
    bad = tpm / "bad.json"
    bad.write_text('{"version": 1, "pcrs": {')
    assert "not valid JSON" in one_line_error(verify(tpm, m=bad))
    bad.write_text(json.dumps({"version": 1, "mode": "production", "pcrs": {"4": {"expected": ["abc"]}}}))
    assert "pcrs.4.expected[0]" in one_line_error(verify(tpm, m=bad))
    bad.write_text(json.dumps({"version": 1, "mode": "production",
                               "pcrs": {"4": {"expected": ["00" * 32], "policy": "maybe"}}}))
    assert "pcrs.4.policy" in one_line_error(verify(tpm, m=bad))


def test_bad_pcr_json(tpm):
    bad = tpm / "bad-pcrs.json"
    bad.write_text(json.dumps({"sha256": {"0": "00" * 31}}))
    assert "sha256.0" in one_line_error(verify(tpm, pcrs=bad))
    bad.write_text(json.dumps({"md5": {"0": "00" * 16}}))
    assert "unknown PCR bank" in one_line_error(verify(tpm, pcrs=bad))
    bad.write_text("{not json")
    assert "not valid JSON" in one_line_error(verify(tpm, pcrs=bad))


def test_bad_key_and_nonce(tpm):
    bad = tpm / "bad.pub"
    bad.write_bytes(b"garbage key")
    assert "bad.pub" in one_line_error(verify(tpm, key=bad))
    assert "--nonce" in one_line_error(verify(tpm, nonce="xyz"))
    assert "not found" in one_line_error(verify(tpm, key=tpm / "missing.pub"))


# ---------------------------------------------------------------- pure library, no TPM needed

def test_measurements_parser_rejects_bad_index():
    with pytest.raises(BadInput, match="pcrs.24"):
        parse_measurements({"version": 1, "mode": "production", "pcrs": {"24": {"expected": ["00" * 32]}}}, "m")


def test_yaml_hex_integers_are_digests():
    values = q.parse_pcr_file(b"sha256:\n  0 : 0x00\n  15: 0x12A0883F16ABF44DCC4CAC1DEC108EB99C652FED124C6989EDDC811FE8EFFB64\n",
                              "p")
    assert values["sha256"][0] == bytes(32)
    assert values["sha256"][15].hex().startswith("12a0883f")


# ---------------------------------------------------------------- record-platform from a quote

def test_record_platform_from_quote(tpm, tmp_path):
    from tests.conftest import new_project

    project = new_project(tmp_path / "p")
    base = ["record-platform", "--platform", "azure-cvm", "--from-quote", tpm / "rsa.msg", "--pcrs",
            tpm / "rsa.pcrs", "--project", project, "--json"]
    res = mb(*base, "--signature", tpm / "rsa.sig", "--ak-pub", tpm / "rsa.pub.pem")
    assert res.returncode == 0, res.stderr
    assert {r["pcr"]: r["state"] for r in json.loads(res.stdout)["pcrs"]} == {i: "added" for i in range(4)}
    assert "(signature checked)" in json.loads(res.stdout)["source"]
    # a wrong key records nothing (exit 1); PCR values that do not match the quote are bad input
    res = mb(*base, "--signature", tpm / "rsa.sig", "--ak-pub", tpm / "other.pub.pem")
    assert res.returncode == 1 and "nothing recorded" in res.stderr
    data = bytearray((tpm / "rsa.pcrs").read_bytes())
    data[4 + 16 * 8 + 4 + 4 + 2] ^= 1
    (tmp_path / "bad.pcrs").write_bytes(bytes(data))
    res = mb(*base[:6], tmp_path / "bad.pcrs", *base[7:])
    assert res.returncode == 2 and "do not match the quote's pcrDigest" in res.stderr


# ---------------------------------------------------------------- the TLS binding (issue 19)

def _evidence(tpm: Path):
    from mithril_client.evidence import Evidence

    quote = q.parse_quote((tpm / "rsa.msg").read_bytes())
    values = q.parse_pcr_file((tpm / "rsa.pcrs").read_bytes(), "pcrs", quote.selections)
    return Evidence("qemu", bytes.fromhex(NONCE), (tpm / "rsa.msg").read_bytes(), (tpm / "rsa.sig").read_bytes(),
                    values, (tpm / "rsa.pub.pem").read_bytes(), (tpm / "rsa.pub.tss").read_bytes(), CA_PEM)


@pytest.mark.parametrize("change, result", [
    ({}, "ok"),
    ({"pcr15": None}, "lists no PCR 15"),
    ({"pcr15": {"expected": [PCR15_SENTINEL], "policy": "warn"}}, "to 'warn'"),
    ({"pcr15": {"expected": ["ab" * 32], "policy": "warn"}}, "to 'warn'"),
    ({"pcr15": {"expected": ["ab" * 32], "policy": "enforce"}}, "PCR 15 MISMATCH"),
])
def test_tls_binding_cannot_be_switched_off_by_the_file(tpm, change, result):
    """A relay presents its own CA as tls_ca next to a genuine quote: only PCR 15 with the CA step
    replayed tells. measurements.json without PCR 15, or with it as `warn`, must not relax that."""
    from mithril_client.measurements import load_measurements
    from mithril_client.verify import verify_evidence

    doc = json.loads(measurements(tpm).read_text())
    for key, value in change.items():
        if value is None:
            del doc["pcrs"]["15"]
        else:
            doc["pcrs"]["15"] = value
    path = tpm / f"binding-{abs(hash(json.dumps(doc, sort_keys=True)))}.json"
    path.write_text(json.dumps(doc))
    report = verify_evidence(_evidence(tpm), bytes.fromhex(NONCE), load_measurements(path), raise_on_failure=False)
    row = next(r for r in report.rows if r.check == "tls binding")
    if result == "ok":
        assert row.result == "ok" and row.policy == "enforce"
    else:
        assert row.failed and result in row.actual, row
        assert not report.ok
    # the quote itself is genuine (no EK here: the qemu AK rows fail regardless)
    assert {r.check for r in report.rows if r.failed} - {"tls binding", "PCR 15"} == {
        "ak", "ek cert chain", "ak activation"}


def test_verify_evidence_fails_closed(tpm):
    """The SDK's default raises: a caller that forgets `report.ok` cannot take a failure for a pass."""
    import mithril_client
    from mithril_client.errors import MithrilError
    from mithril_client.measurements import load_measurements
    from mithril_client.verify import AttestationFailed, verify_evidence

    with pytest.raises(AttestationFailed) as e:
        verify_evidence(_evidence(tpm), bytes.fromhex(NONCE), load_measurements(measurements(tpm)))
    assert isinstance(e.value, MithrilError) and e.value.exit_code == 1
    assert not e.value.report.ok and "ak" in str(e.value)
    assert mithril_client.AttestationFailed is AttestationFailed
    from mithril_client.session import AttestationFailed as from_session

    assert from_session is AttestationFailed
