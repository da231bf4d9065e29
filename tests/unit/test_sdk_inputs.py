"""The client SDK on any input (issue 19): every entry point raises only MithrilError subclasses
(BadInput, VerificationFailed/AttestationFailed), never ValueError, KeyError, TypeError or
RecursionError. Hypothesis mutates a REAL azure-cvm evidence document (tests/fixtures/azure,
through tests.unit.test_record_platform.cvm_evidence), measurements.json documents and SNP
policies — values, keys (Unicode digits such as "²", which str.isdigit accepts and int refuses),
trailing newlines — and feeds raw bytes to the TPM structure parsers.
"""

from __future__ import annotations

import copy
import json
import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mithril_client.errors import BadInput, MithrilError
from mithril_client.evidence import parse_evidence, parse_nonce
from mithril_client.measurements import parse_measurements
from mithril_client.platforms.azure_cvm import SnpPolicy, parse_hcl_report
from mithril_client.session import AttestedSession, tls_row
from mithril_client.tpm2 import load_ak, parse_pcr_file, parse_public, parse_quote, parse_signature
from mithril_client.verify import Trust, verify_evidence

pytestmark = pytest.mark.filterwarnings("ignore:Parsed a serial number")
EXAMPLES = int(os.environ.get("MITHRIL_FUZZ_EXAMPLES", "0"))
settings.register_profile("sdk", derandomize=not EXAMPLES, database=None, deadline=None,
                          suppress_health_check=list(HealthCheck))
settings.load_profile("sdk")

UNICODE_DIGITS = ["²", "١", "٣", "𝟙", "½", "Ⅻ", "０", "1\n", " 1", "01", "-1", "1_0", "0x1"]
KEYS = st.one_of(st.sampled_from(UNICODE_DIGITS), st.text(max_size=4))
VALUES = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(), st.text(max_size=12),
              st.sampled_from(["00" * 32, "00" * 32 + "\n", "ab" * 48, "²", "enforce", "warn"])),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(KEYS, inner, max_size=3)), max_leaves=8)


def examples(n: int):
    return settings(max_examples=EXAMPLES or n)


def only_mithril_errors(call):
    try:
        return call()
    except MithrilError:
        return None


def paths(doc, prefix=()):
    out = [prefix] if prefix else []
    if isinstance(doc, dict):
        for k, v in doc.items():
            out += paths(v, (*prefix, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc[:24]):
            out += paths(v, (*prefix, i))
    return out


def mutate(doc, data) -> object:
    """One change: a value replaced, a key replaced by another (e.g. a Unicode digit), a key added
    to a mapping, or a field deleted."""
    doc = copy.deepcopy(doc)
    where = data.draw(st.sampled_from(paths(doc)))
    parent = doc
    for k in where[:-1]:
        parent = parent[k]
    last = where[-1]
    kind = data.draw(st.sampled_from(["value", "key", "add", "delete"]))
    if kind == "value":
        parent[last] = data.draw(VALUES)
    elif isinstance(parent, dict) and kind == "key":
        parent[data.draw(KEYS)] = parent.pop(last)
    elif isinstance(parent, dict) and kind == "add":
        parent[data.draw(KEYS)] = data.draw(VALUES)
    elif isinstance(parent, dict):
        del parent[last]
    return doc


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    from tests.unit.test_record_platform import cvm_evidence

    raw = cvm_evidence(tmp_path_factory.mktemp("ev")).read_bytes()
    doc = json.loads(raw)
    m = {"version": 1, "platform": "azure-cvm", "mode": "production",
         "pcrs": {str(i): {"expected": [v], "policy": "enforce"} for i, v in doc["pcrs"]["sha256"].items()}}
    return doc, m


# ---------------------------------------------------------------- fixed cases first (what used to crash)

@pytest.mark.parametrize("key", UNICODE_DIGITS)
def test_unicode_digit_keys_are_bad_input(real, key):
    doc, m = real
    ev = copy.deepcopy(doc)
    ev["pcrs"]["sha256"][key] = "00" * 32
    with pytest.raises(BadInput, match="PCR index"):
        parse_evidence(json.dumps(ev))
    bad_m = copy.deepcopy(m)
    bad_m["pcrs"][key] = {"expected": ["00" * 32]}
    with pytest.raises(BadInput, match="PCR index"):
        parse_measurements(bad_m, "m.json")
    if key != "01":  # a PCR file of tpm2-tools may write indices its own way; only never crash
        with pytest.raises(BadInput):
            parse_pcr_file(json.dumps({"sha256": {key: "00" * 32}}).encode(), "pcrs.json")


@pytest.mark.parametrize("text", ["00" * 16 + "\n", "0" * 63 + "\n", "00" * 16 + "\r\n", "\n" + "00" * 16,
                                  "00" * 16 + " ", "１２" * 16])
def test_nonce_with_anything_after_the_hex_is_bad_input(text):
    with pytest.raises(BadInput):
        parse_nonce(text)


def test_hex_values_must_be_exact(real):
    doc, m = real
    for bad in ("00" * 32 + "\n",):
        ev = copy.deepcopy(doc)
        ev["pcrs"]["sha256"]["0"] = bad
        with pytest.raises(BadInput):
            parse_evidence(json.dumps(ev))
        bad_m = copy.deepcopy(m)
        bad_m["pcrs"]["0"]["expected"] = [bad]
        with pytest.raises(BadInput):
            parse_measurements(bad_m, "m.json")
        with pytest.raises(BadInput):
            parse_measurements({**m, "application_disk": {"roothash": bad}}, "m.json")


def test_the_real_document_verifies_before_it_is_mutated(real):
    """The base of the mutations below is genuine: its quote, PCRs and AK trust verify (only the
    TLS binding fails: the capture's PCR 15 has no CA step a measurements.json could predict)."""
    doc, m = real
    report = verify_evidence(parse_evidence(json.dumps(doc)), bytes(32), parse_measurements(m, "m"),
                             raise_on_failure=False)
    failed = {r.check for r in report.rows if r.failed}
    assert failed <= {"tls binding", "PCR 15", "nonce"} and "ak" not in failed, report.rows


# ---------------------------------------------------------------- generated

@examples(300)
@given(data=st.data())
def test_mutated_evidence_only_raises_mithril_errors(real, data):
    doc, m = real
    mutated = mutate(doc, data)
    try:
        raw = json.dumps(mutated)
    except (ValueError, TypeError):
        return
    measurements = parse_measurements(m, "m")

    def run():
        ev = parse_evidence(raw)
        return verify_evidence(ev, bytes(32), measurements, Trust(fetch=lambda url: b""), raise_on_failure=False)

    only_mithril_errors(run)


@examples(300)
@given(data=st.data())
def test_mutated_measurements_only_raise_mithril_errors(real, data):
    doc, m = real
    mutated = mutate(m, data)
    ev = parse_evidence(json.dumps(doc))

    def run():
        parsed = parse_measurements(mutated, "m.json")
        return verify_evidence(ev, bytes(32), parsed, raise_on_failure=False)

    only_mithril_errors(run)


@examples(200)
@given(doc=st.dictionaries(st.sampled_from(["allow_debug", "vmpl", "min_tcb_milan", "id_key_digests",
                                            "extra_id_key_digests", "id_key_policy", "measurements", "allow_smt",
                                            "author_key_digests", "x"]), VALUES, max_size=4) | VALUES)
def test_snp_policies_only_raise_mithril_errors(doc):
    only_mithril_errors(lambda: SnpPolicy.from_json(doc, "policy.json"))


@examples(300)
@given(raw=st.binary(max_size=600))
def test_tpm_structures_only_raise_mithril_errors(raw):
    for parse in (parse_quote, parse_signature, parse_public, load_ak, parse_hcl_report,
                  lambda b: parse_pcr_file(b, "pcrs"), lambda b: parse_evidence(b)):
        only_mithril_errors(lambda: parse(raw))


@examples(200)
@given(url=st.text(max_size=40) | st.sampled_from(["https://[::1", "https://h:99999/", "https://h:²/", "http://h/",
                                                    "https://h:1\n/"]),
       m=VALUES, ek_ca=st.one_of(st.none(), st.binary(max_size=64), st.sampled_from(["/nonexistent/ca.pem"])))
def test_session_arguments_only_raise_mithril_errors(url, m, ek_ca):
    only_mithril_errors(lambda: AttestedSession(url, m if isinstance(m, dict) else {"version": m}, ek_ca=ek_ca))
    good = {"version": 1, "platform": "qemu", "mode": "production", "pcrs": {"15": {"expected": ["00" * 32]}}}
    only_mithril_errors(lambda: AttestedSession("https://h", good, trust=m, timeout=m))


@examples(100)
@given(cert=st.binary(max_size=300), ca=st.binary(max_size=300))
def test_tls_row_only_raises_mithril_errors(cert, ca):
    only_mithril_errors(lambda: tls_row(cert, ca))
