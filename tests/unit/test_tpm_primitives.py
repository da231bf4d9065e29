"""The TPM/PCR primitives of mithril_client.tpm2 (extend, the PCR 15 steps, the nonce rule, the
TPM structure reader) against outside references: a real TPM (swtpm) extending, hashing and
quoting, tpm2-tools' own decoding of what it made (tpm2_print, tpm2_createak -n), the TPM 2.0
Library's layouts; forged inputs for every check; and that no second implementation exists."""

from __future__ import annotations

import ast
import hashlib
import json
import re
from pathlib import Path

import pytest

from attestation_server import server as srv
from attestation_server import tls
from attestation_server import tpm as T
from mithril_client import evidence, tpm2
from mithril_client.errors import BadInput
from mithril_client.measurements import parse_measurements
from mithril_client.quote import quote_rows
from pipeline import attest
from pipeline.measure import pcr15
from pipeline.measure.pcr import Simulator
from pipeline.swtpm import Swtpm
from tests.conftest import need

ROOT = Path(__file__).resolve().parents[2]
ROOTHASH = hashlib.sha256(b"an application disk").digest()


@pytest.fixture(scope="module")
def swtpm(tmp_path_factory):
    need("swtpm", "tpm2_startup", "tpm2_pcrextend", "tpm2_pcrevent", "tpm2_pcrread", "tpm2_quote", "tpm2_print")
    with Swtpm(tmp_path_factory.mktemp("swtpm") / "state", for_qemu=False) as t:
        t.tool(["tpm2_startup", "-c"])
        yield t


def pcr_value(t: Swtpm, index: int) -> bytes:
    text = t.tool(["tpm2_pcrread", f"sha256:{index}"]).stdout.decode()
    return bytes.fromhex(re.search(rf"^\s*{index}\s*: 0x([0-9A-Fa-f]{{64}})$", text, re.M).group(1))


def printed(text: str, name: str) -> list[str]:
    """Every value of `name:` in tpm2-tools' output, as text (YAML would read 8018 as a number)."""
    return re.findall(rf"^\s*{re.escape(name)}: (.*)$", text, re.M)


# ---------------------------------------------------------------------------- extend and PCR 15

def test_pcr15_steps_agree_with_a_real_tpm(swtpm, tmp_path):
    """The build's prediction (roothash, sentinel) and the client's replay of the CA step, each
    against the value swtpm holds after doing the same: tpm2_pcrextend for the digests
    measured-setup extends, tpm2_pcrevent (the TPM hashes the PEM itself) for the CA."""
    swtpm.tool(["tpm2_pcrextend", f"15:sha256={ROOTHASH.hex()}"])
    swtpm.tool(["tpm2_pcrextend", f"15:sha256={'00' * 32}"])
    before = pcr_value(swtpm, 15)
    assert pcr15.predict(Simulator(), ROOTHASH) == before

    _, cert = tls.make_ca()
    ca_pem = tls.cert_pem(cert)
    (tmp_path / "ca.pem").write_bytes(ca_pem)
    swtpm.tool(["tpm2_pcrevent", "15", tmp_path / "ca.pem"])
    after = pcr_value(swtpm, 15)
    assert tpm2.with_ca(before, ca_pem) == after
    assert tpm2.with_ca(before, ca_pem + b"\n") != after  # the exact served bytes, nothing else


def test_the_server_records_the_value_its_extend_gives(swtpm, tmp_path):
    """The server extends with its own command code; its record's `after` (computed with
    tpm2.extend) must be what the TPM reports afterwards."""
    _, cert = tls.make_ca()
    ca_pem = tls.cert_pem(cert)
    cfg = srv.Config("qemu", f"swtpm:{swtpm.socket}", tmp_path / "tls", tmp_path / "state", pcr=16)
    cfg.state_dir.mkdir()
    srv._measure_ca(cfg, ca_pem)
    record = json.loads((cfg.state_dir / "pcr.json").read_text())
    assert record["before"] == "00" * 32
    assert bytes.fromhex(record["after"]) == pcr_value(swtpm, 16) == tpm2.extend(bytes(32), tpm2.ca_digest(ca_pem))


def test_extend_refuses_what_is_not_a_sha256_value():
    for old, digest in ((bytes(32), b"short"), (bytes(20), bytes(32)), (bytes(32), bytes(33))):
        with pytest.raises(ValueError):
            tpm2.extend(old, digest)


# ---------------------------------------------------------------------------- the nonce

def test_the_nonce_bounds_fit_a_real_quote(swtpm):
    """qualifyingData is a TPM2B_DATA: at most sizeof(TPMT_HA) = 66 bytes on swtpm (it implements
    SHA-512). NONCE_MAX fits and comes back as extraData; 67 bytes are refused by the TPM itself
    (TPM_RC_SIZE on parameter 1), so the rule's bound is below the TPM's."""
    with T.Tpm(f"swtpm:{swtpm.socket}") as tpm:
        ak = tpm.create_primary(T.RH_ENDORSEMENT, T.AK_TEMPLATE)
        for nonce in (bytes(range(tpm2.NONCE_MIN)), bytes(range(tpm2.NONCE_MAX))):
            attest_, _ = tpm.quote(ak.handle, nonce, T.ALG_SHA256, [15])
            assert tpm2.parse_quote(attest_).extra_data == nonce
        with pytest.raises(T.TpmError) as e:
            tpm.quote(ak.handle, bytes(67), T.ALG_SHA256, [15])
        assert (e.value.base, e.value.parameter) == (0x095, 1)  # TPM_RC_SIZE, qualifyingData


@pytest.mark.parametrize("size", [0, 1, 15, 65, 66])
def test_a_nonce_outside_the_rule_is_refused_everywhere(size):
    """The SDK's evidence parser, the server's request parser (the same function) and
    `attest verify --nonce` refuse it; a quote could carry it, the rule does not let it count."""
    text = "ab" * size
    with pytest.raises(BadInput, match=f"{size} bytes; a nonce has 16 to 64 bytes"):
        tpm2.parse_nonce(text)
    with pytest.raises(BadInput, match=f"--nonce: {size} bytes"):
        attest.check_nonce(attest.parse_hex(text), "--nonce")
    with pytest.raises(BadInput, match=f"evidence: nonce: {size} bytes"):
        evidence.parse_evidence(json.dumps({"version": 1, "platform": "qemu", "nonce": text}))
    assert srv.parse_nonce is evidence.parse_nonce is tpm2.parse_nonce


@pytest.mark.parametrize("size", [16, 32, 64])
def test_a_nonce_inside_the_rule_is_accepted_everywhere(size):
    nonce = bytes(range(size))
    assert tpm2.parse_nonce(nonce.hex()) == attest.check_nonce(attest.parse_hex(" 0x" + nonce.hex() + "\n")) == nonce


@pytest.mark.parametrize("text", ["abc", "zz" * 16, "0x" + "ab" * 16, "ab" * 16 + "\n", " " + "ab" * 16, None, 16])
def test_a_nonce_that_is_not_plain_hex_is_refused(text):
    with pytest.raises(BadInput, match="even-length hex"):
        tpm2.parse_nonce(text)


def test_a_genuine_quote_over_a_short_nonce_does_not_verify(swtpm):
    """The TPM signs any qualifyingData up to its limit; the verifier is what refuses a quote
    whose nonce (matching or not) is below the rule."""
    with T.Tpm(f"swtpm:{swtpm.socket}") as tpm:
        ak = tpm.create_primary(T.RH_ENDORSEMENT, T.AK_TEMPLATE)
        for size in (tpm2.NONCE_MIN - 1, tpm2.NONCE_MIN):
            nonce = bytes(range(1, size + 1))
            attest_, sig = tpm.quote(ak.handle, nonce, T.ALG_SHA256, [15])
            values = {"sha256": tpm.pcr_read(T.ALG_SHA256, [15])}
            args = (tpm2.parse_quote(attest_), tpm2.parse_signature(sig), tpm2.load_ak(ak.public), values, nonce,
                    parse_measurements({"version": 1, "mode": "production", "pcrs": {"15": {"expected": ["00" * 32]}}},
                                       "m"))
            if size < tpm2.NONCE_MIN:
                with pytest.raises(BadInput, match=f"nonce: {size} bytes"):
                    quote_rows(*args)
            else:  # the same quote shape over a nonce inside the rule: signature and nonce verify
                rows = {r.check: r.result for r in quote_rows(*args)}
                assert rows["signature"] == rows["nonce"] == rows["pcr digest"] == "ok", rows


def test_the_sdk_refuses_a_short_verifier_nonce_for_any_evidence_version():
    """Evidence v2's quote carries a digest of the nonce (always 32 bytes), so the rule is applied
    to the verifier's own nonce before anything else."""
    from mithril_client.verify import verify_evidence

    m = parse_measurements({"version": 1, "mode": "production", "pcrs": {"15": {"expected": ["00" * 32]}}}, "m")
    for version in (1, 2):
        ev = evidence.Evidence("qemu", bytes(16), b"", b"", {}, b"", b"", b"", version=version)
        with pytest.raises(BadInput, match="nonce: 8 bytes"):
            verify_evidence(ev, bytes(8), m, raise_on_failure=False)


def test_what_our_clients_send_is_inside_the_rule():
    from mithril_client.session import NONCE_BYTES

    assert tpm2.NONCE_MIN <= NONCE_BYTES <= tpm2.NONCE_MAX


# ---------------------------------------------------------------------------- TPM structures

@pytest.fixture(scope="module")
def quoted(swtpm, tmp_path_factory):
    """A quote and two AKs made by tpm2-tools, with tpm2-tools' own decoding of each."""
    need("tpm2_createek", "tpm2_createak")
    d = tmp_path_factory.mktemp("quoted")
    swtpm.tool(["tpm2_createek", "-c", d / "ek.ctx", "-G", "rsa", "-u", d / "ek.pub"])
    made = {}
    for alg, scheme in (("ecc", "ecdsa"), ("rsa", "rsassa")):
        out = swtpm.tool(["tpm2_createak", "-C", d / "ek.ctx", "-c", d / f"{alg}.ctx", "-G", alg, "-g", "sha256",
                          "-s", scheme, "-u", d / f"{alg}.pub", "-n", d / f"{alg}.name"])
        made[alg] = out.stdout.decode()
    nonce = bytes(range(100, 132))
    swtpm.tool(["tpm2_quote", "-c", d / "ecc.ctx", "-l", "sha256:0,4,15+sha1:7", "-q", nonce.hex(), "-g", "sha256",
                "-m", d / "quote.msg", "-s", d / "quote.sig"])
    shown = {name: swtpm.tool(["tpm2_print", "-t", kind, d / name]).stdout.decode()
             for name, kind in (("quote.msg", "TPMS_ATTEST"), ("ecc.pub", "TPM2B_PUBLIC"), ("rsa.pub", "TPM2B_PUBLIC"))}
    caps = swtpm.tool(["tpm2_getcap", "properties-fixed"]).stdout.decode()
    shown["firmware"] = "\n".join(re.findall(r"^TPM2?_PT_FIRMWARE_VERSION_[12]:\n  raw: .*$", caps, re.M))
    return d, nonce, made, shown


def test_tpms_attest_fields_agree_with_tpm2_print(quoted):
    """TPMS_ATTEST (Part 2, 10.12.12) as tpm2-tools decodes it, field by field."""
    d, nonce, _, shown = quoted
    text, firmware = shown["quote.msg"], shown["firmware"]
    q = tpm2.parse_quote((d / "quote.msg").read_bytes())
    assert printed(text, "magic") == [f"{tpm2.TPM_GENERATED_VALUE:08x}"] and printed(text, "type") == ["8018"]
    assert printed(text, "qualifiedSigner") == [q.qualified_signer.hex()]
    assert printed(text, "extraData") == [nonce.hex()] and q.extra_data == nonce
    fields = ("clock", "resetCount", "restartCount", "safe")
    assert [int(printed(text, f)[0]) for f in fields] == [q.clock, q.reset_count, q.restart_count, int(q.safe)]
    # firmwareVersion: tpm2_print dumps the UINT64's bytes in host order; the TPM's own account
    # of it is TPM_PT_FIRMWARE_VERSION_1 (high 32 bits) and _2 (low)
    assert (int(printed(firmware, "raw")[0], 16), int(printed(firmware, "raw")[1], 16)) == (
        q.firmware_version >> 32, q.firmware_version & 0xFFFFFFFF)
    banks = [re.search(r"\((\w+)\)", h).group(1) for h in printed(text, "hash")]
    bitmaps = [bytes.fromhex(b) for b in printed(text, "pcrSelect") if b]  # the first is the list's heading
    assert [(s.bank, s.pcrs) for s in q.selections] == [
        (bank, tuple(i for i in range(8 * len(bits)) if bits[i // 8] >> i % 8 & 1)) for bank, bits in zip(banks, bitmaps)]
    assert q.selections == (tpm2.PcrSelection("sha256", (0, 4, 15)), tpm2.PcrSelection("sha1", (7,)))
    assert printed(text, "pcrDigest") == [q.pcr_digest.hex()]


@pytest.mark.parametrize("alg", ["ecc", "rsa"])
def test_tpm2b_public_agrees_with_tpm2_print_and_the_tpm_name(quoted, alg):
    d, _, made, shown = quoted
    text = shown[f"{alg}.pub"]
    pub = tpm2.parse_public((d / f"{alg}.pub").read_bytes())
    assert pub.name_alg == re.search(r"^name-alg:\n  value: (\w+)", text, re.M).group(1)
    assert pub.attributes == int(re.search(r"^attributes:\n  value: .*\n  raw: (0x[0-9a-f]+)", text, re.M).group(1), 16)
    assert pub.attributes & tpm2.RESTRICTED and pub.attributes & tpm2.SIGN and pub.attributes & tpm2.FIXED_TPM
    numbers = pub.key.public_numbers()
    if alg == "ecc":
        assert [f"{numbers.x:064x}", f"{numbers.y:064x}"] == printed(text, "x") + printed(text, "y")
    else:
        assert [f"{numbers.n:0512x}"] == printed(text, "rsa") and [str(numbers.e)] == printed(text, "exponent")
    # the name the TPM computed (tpm2_createak -n) is what credential activation binds
    assert pub.name == (d / f"{alg}.name").read_bytes()
    assert printed(made[alg], "name") == [pub.name.hex()]


def test_every_truncation_of_a_real_quote_is_refused(quoted):
    d, *_ = quoted
    raw = (d / "quote.msg").read_bytes()
    for n in range(len(raw)):
        with pytest.raises(BadInput, match="truncated|magic"):
            tpm2.parse_quote(raw[:n])


@pytest.mark.parametrize("name, parse", [("quote.msg", tpm2.parse_quote), ("quote.sig", tpm2.parse_signature),
                                         ("ecc.pub", tpm2.parse_public)])
def test_trailing_bytes_are_refused(quoted, name, parse):
    d, *_ = quoted
    raw = (d / name).read_bytes()
    parse(raw)  # the genuine one parses
    with pytest.raises(BadInput, match="1 unexpected bytes"):
        parse(raw + b"\0")


def test_a_tpm2b_size_beyond_the_data_is_refused(quoted):
    d, *_ = quoted
    raw = (d / "ecc.pub").read_bytes()
    with pytest.raises(BadInput, match="truncated: publicArea needs"):
        tpm2.parse_public((len(raw) - 1).to_bytes(2, "big") + raw[2:])
    with pytest.raises(BadInput, match="1 unexpected bytes after the x"):
        tpm2.unwrap_tpm2b(b"\x00\x01ab", "w", "x")
    assert tpm2.unwrap_tpm2b(b"\x00\x02ab", "w", "x") == b"ab" and tpm2.tpm2b(b"ab") == b"\x00\x02ab"


@pytest.mark.parametrize("raw, match", [
    (b"\x00\x00\x00\x11", "17 banks is implausible"),
    (b"\x00\x00\x00\x01" + b"\x00\x0b\x05" + bytes(5), "sizeofSelect: 5 is larger than 4"),
    (b"\x00\x00\x00\x01" + b"\x00\x99\x03" + bytes(3), "unknown or unsupported hash algorithm 0x0099"),
    (b"\x00\x00\x00\x01" + b"\x00\x0b\x03\x01", "truncated"),
])
def test_forged_pcr_selections_are_refused(raw, match):
    """TPML_PCR_SELECTION (Part 2, 10.9.7): u32 count, then per bank u16 hash, u8 sizeofSelect, bitmap."""
    with pytest.raises(BadInput, match=match):
        tpm2.Reader(raw, "sel").pcr_selection()
    with pytest.raises(T.TpmError, match=match):  # the same reader in the server: the TPM's fault there
        T.Reader(raw, "PCR_Read").pcr_selection()


# ---------------------------------------------------------------------------- one implementation

HOME = "mithril_client/tpm2.py"
# What looks like a copy and is not: (file, text of the line) -> why.
NOT_COPIES = {
    ("pipeline/measure/verity.py", "hashlib.sha256(p.salt + parent)"): "dm-verity's root: sha256(salt || block)",
    ("attestation_server/nvml.py", "len(nonce) != NONCE_SIZE"): "a GPU report's SPDM nonce: exactly 32 bytes",
    ("pipeline/attest.py", "len(gpu_nonce) != NONCE_LEN"): "`attest gpu --nonce`: the SPDM nonce, exactly 32 bytes",
    ("mithril_client/gpu/spdm.py", "class _Reader:"): "SPDM messages are little-endian, not TPM structures",
}
FUNCTIONS = {"extend", "with_ca", "pcr15_with_ca", "ca_digest", "check_nonce", "parse_nonce", "tpm2b", "unwrap_tpm2b"}


def _copies(path: Path, rel: str, allowed=NOT_COPIES) -> list[str]:
    found = []
    text = path.read_text()
    lines = text.splitlines()
    for node in ast.walk(ast.parse(text, rel)):
        what = None
        # sha256(a + b) with no literal in it: the shape of a PCR extend
        if (isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) in ("sha256", "new")
                and node.args and isinstance(node.args[-1], ast.BinOp) and isinstance(node.args[-1].op, ast.Add)
                and not any(isinstance(n, ast.Constant) for n in ast.walk(node.args[-1]))):
            what = "sha256(a + b), an extend"
        # a bound on the length of something called a nonce (not a count: `len(nonces) != 1`)
        elif isinstance(node, ast.Compare):
            sides = [node.left, *node.comparators]
            lengths = [s for s in sides if isinstance(s, ast.Call) and getattr(s.func, "id", "") == "len" and s.args
                       and "nonce" in ast.unparse(s.args[0]).lower()]
            if lengths and any(s not in lengths and not (isinstance(s, ast.Constant) and s.value in (0, 1))
                               for s in sides):
                what = "a nonce length check"
        # struct.pack(">H", len(x)): a TPM2B's size, by hand
        elif (isinstance(node, ast.Call) and ast.unparse(node.func) == "struct.pack" and len(node.args) == 2
              and isinstance(node.args[0], ast.Constant) and node.args[0].value == ">H"
              and isinstance(node.args[1], ast.Call) and getattr(node.args[1].func, "id", "") == "len"):
            what = "a TPM2B size by hand"
        elif isinstance(node, ast.FunctionDef) and node.name in FUNCTIONS and node.col_offset == 0:
            what = f"def {node.name}"
        elif (isinstance(node, ast.ClassDef) and node.name.lstrip("_").endswith("Reader")
              and not any("tpm2.Reader" in ast.unparse(b) for b in node.bases)):
            what = f"class {node.name}, a second structure reader"
        elif isinstance(node, ast.Constant) and node.value == tpm2.TPM_GENERATED_VALUE and type(node.value) is int:
            what = "TPM_GENERATED_VALUE"
        if what and not any(r == rel and line in lines[node.lineno - 1] for r, line in allowed):
            found.append(f"{rel}:{node.lineno}: {what}")
    return found


def test_no_second_implementation_outside_the_module():
    found = []
    for package in ("mithril_client", "attestation_server", "pipeline"):
        for path in sorted((ROOT / package).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            if rel != HOME:
                found += _copies(path, rel)
    assert not found, "use mithril_client.tpm2 instead:\n" + "\n".join(found)


def test_the_copy_finder_finds_the_copies_this_module_replaced(tmp_path):
    """The shapes the old copies had (server.py, measurements.py, pipeline/attest.py, credential.py) are found."""
    old = tmp_path / "old.py"
    old.write_text(
        "import hashlib\n"
        "def extend(old, digest):\n    return hashlib.sha256(old + digest).digest()\n"
        "def f(current, digest, nonce):\n"
        "    after = hashlib.sha256(current + digest).hexdigest()\n"
        "    if not 1 <= len(nonce) <= 64:\n        raise ValueError\n"
        "class Reader:\n    pass\n"
        "def g(blob):\n    return struct.pack('>H', len(blob)) + blob\n")
    found = sorted(f.split(": ", 1)[1] for f in _copies(old, "pipeline/old.py"))
    assert found == ["a TPM2B size by hand", "a nonce length check", "class Reader, a second structure reader",
                     "def extend", "sha256(a + b), an extend", "sha256(a + b), an extend"]


def test_every_exception_is_still_needed():
    """Each entry of NOT_COPIES names a line the finder reports without it (else: remove it)."""
    for rel, line in NOT_COPIES:
        lines = (ROOT / rel).read_text().splitlines()
        reported = {int(f.split(":")[1]) for f in _copies(ROOT / rel, rel, allowed={})}
        assert any(line in lines[n - 1] for n in reported), (rel, line)
