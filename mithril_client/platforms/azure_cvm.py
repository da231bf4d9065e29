"""AK trust on an Azure confidential VM (AMD SEV-SNP under Azure's paravisor, the HCL).

The HCL report (vTPM NV 0x01400001) holds an SNP attestation report whose report_data is the
hash of the HCL's runtime data JSON, and that JSON names the vTPM's AK (`HCLAkPub`). So the AK
is trusted when: the report is signed by the VCEK, the VCEK chains to AMD's pinned ARK through
the ASK, hash(runtime data) is the report's report_data, HCLAkPub is the quote's AK, the
report's guest policy, VMPL and TCB are acceptable — and the guest is Azure's paravisor: its
ID_KEY_DIGEST is one of Azure's ID keys. Any SNP guest can ask its genuine chip for a report
over runtime data naming a software key; only the ID key says *which* firmware was launched.

Why the ID key and not MEASUREMENT: at launch (SNP_LAUNCH_FINISH) the firmware refuses an ID
block whose launch digest differs from the measured one or whose signature does not verify with
the ID key, and the report carries sha384 of that ID key. Azure's paravisor measurement changes
with every firmware roll and Microsoft publishes no list of it, while its ID key stays (the
2025 captures of two host generations carry one digest over two measurements). So the ID key
is pinned by default; a MEASUREMENT allow-list can be added in the policy for those who track it.

Layouts (little-endian):
  HCL header, 32 bytes: "HCLA", version, report_size, request_type, status, 3 reserved u32.
  SNP attestation report, 1184 bytes (AMD SEV-SNP firmware ABI, ATTESTATION_REPORT).
  IGVM request data, 20 bytes: data_size, version, report_type (2 = SNP, 4 = TDX),
    report_data_hash_type (1 = SHA-256, 2 = SHA-384, 3 = SHA-512), variable_data_size;
    then the runtime data JSON of variable_data_size bytes (the NV index pads with zeros).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
import struct
from dataclasses import dataclass
from datetime import datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from ..errors import BadInput, VerificationFailed
from ..measurements import Row
from .. import certs

HCL_HEADER = 32
SNP_REPORT = 1184
IGVM_HEADER = 20
MAX_HCL_REPORT = 16 * 1024  # the NV index is 2600 bytes on today's hosts
SIGNED_PART = 0x2A0  # the report signature covers bytes [0, 0x2A0)
SNP_REPORT_TYPE, TDX_REPORT_TYPE = 2, 4
HASH_TYPES = {1: "sha256", 2: "sha384", 3: "sha512"}
ECDSA_P384_SHA384 = 1
# Guest policy bits (AMD SEV-SNP firmware ABI spec 56860, "Guest Policy"): what the hypervisor
# may do to the guest. Bit 17 is reserved (must be one).
POLICY_SMT = 1 << 16  # SMT may be enabled on the host (Azure's policy sets it: a sibling thread may be another VM)
POLICY_MIGRATE_MA = 1 << 18  # a migration agent may be associated (it can export the guest's memory)
POLICY_DEBUG = 1 << 19  # the hypervisor may debug the guest (read its memory)
# The report's flags at 0x48: bit 0 AUTHOR_KEY_EN, bit 1 MASK_CHIP_KEY, bits 4:2 SIGNING_KEY
# (0 = VCEK, 1 = VLEK, 7 = none).
FLAG_AUTHOR_KEY_EN, FLAG_MASK_CHIP_KEY = 1 << 0, 1 << 1
SIGNING_KEY_VCEK = 0

# sha384 of the public ID keys Azure signs its paravisor's ID block with. Where each was seen:
# mithril_client/data/SOURCES.md ("Azure paravisor ID keys"). `record-platform --from-evidence`
# prints the digest a real VM reports; add a new one with --snp-policy until a release ships it.
AZURE_ID_KEY_DIGESTS = (
    # every 2025 capture (Milan and Genoa hosts), in reports AMD's chain signs
    "942fd93ebde6ea7a96efadeafc60f1c6b3d10e703b1dafd7555b92f7f3d32d0e006767648cba5b102af3d65756af4177",
    # Constellation's default list, from 2023-10 to its last release
    "0356215882a825279a85b300b0b742931d113bf7e32dde2e50ffde7ec743ca491ecdd7f336dc28a6e0b2bb57af7a44a3",
    # a 2023-10 capture (Milan host), in a report AMD's chain signs
    "57e229e0ffe5fa92d0faddff6cae0e61c926fc9ef9afd20a8b8cfcf7129db9338cbe5bf3f6987733a2bf65d06dc38fc1",
)
_SHA384_HEX = re.compile(r"[0-9a-f]{96}")

# VCEK certificate extensions (AMD "VCEK certificate and KDS interface specification")
OID_BL_SPL = x509.ObjectIdentifier("1.3.6.1.4.1.3704.1.3.1")
OID_TEE_SPL = x509.ObjectIdentifier("1.3.6.1.4.1.3704.1.3.2")
OID_SNP_SPL = x509.ObjectIdentifier("1.3.6.1.4.1.3704.1.3.3")
OID_UCODE_SPL = x509.ObjectIdentifier("1.3.6.1.4.1.3704.1.3.8")
OID_HWID = x509.ObjectIdentifier("1.3.6.1.4.1.3704.1.4")


@dataclass(frozen=True)
class Product:
    name: str
    ark: x509.Certificate
    ask: x509.Certificate


PRODUCTS = (
    Product("Milan",
            certs.data_cert("amd-milan-ark.pem", "69d063b45344d26a2e94e1f4210de49ef555308287d4c174445c95639a540bcd"),
            certs.data_cert("amd-milan-ask.pem", "67d303bd3905fd38db8b20e0793699870e7fa612eaad5dec358293fd8c0bac1b")),
    Product("Genoa",
            certs.data_cert("amd-genoa-ark.pem", "4c6598d19c18719c5dfd4a7d335f674e5bfe1d8f800cea2cf270c10d103db2f1"),
            certs.data_cert("amd-genoa-ask.pem", "5464738c1546aed5f2cecf1dc98c5c960a92e8913238a61711bc90ec6e828521")),
)


@dataclass(frozen=True)
class Tcb:
    """Security patch levels of a TCB_VERSION (Milan and Genoa layout: byte 0 boot loader,
    1 TEE, 6 SNP firmware, 7 microcode)."""

    bootloader: int
    tee: int
    snp: int
    microcode: int

    @classmethod
    def from_u64(cls, raw: bytes) -> Tcb:
        return cls(raw[0], raw[1], raw[6], raw[7])

    def at_least(self, minimum: Tcb) -> bool:
        return all(getattr(self, f) >= getattr(minimum, f) for f in ("bootloader", "tee", "snp", "microcode"))

    def __str__(self) -> str:
        return f"bl={self.bootloader} tee={self.tee} snp={self.snp} ucode={self.microcode}"


ENFORCEMENT = ("enforce", "warn")


def _digest_list(value, where: str, name: str) -> tuple[str, ...]:
    if not (isinstance(value, (list, tuple)) and all(isinstance(v, str) and _SHA384_HEX.fullmatch(v) for v in value)):
        raise BadInput(where, f"{name}: expected a list of sha384 digests (96 lower-case hex digits each)")
    return tuple(value)


@dataclass(frozen=True)
class SnpPolicy:
    """What the client accepts of the SNP report. SPL numbering is per product, hence one minimum
    each; the defaults are the TCBs Azure's hosts reported in the public captures of January 2025
    (tests/fixtures/azure/SOURCES.md). Raise them as AMD publishes fixes.

    `id_key_digests`: Azure's paravisor ID keys (`id_key_policy` "warn" reports a stranger
    without failing: only to find a new key's digest). `author_key_digests`: accepted author keys
    when a report says AUTHOR_KEY_EN (Azure uses none). `measurements`: an optional allow-list
    of MEASUREMENT. `allow_smt`: Azure launches every CVM with SMT allowed and offers no way
    out, so refusing it refuses Azure. `amd_roots`: the AMD roots (ARK, ASK per product);
    anything but AMD's is for tests and private SNP deployments."""

    allow_debug: bool = False
    vmpl: int = 0  # the HCL runs at VMPL 0 and requests the report there
    min_tcb_milan: Tcb = Tcb(bootloader=4, tee=0, snp=24, microcode=219)
    min_tcb_genoa: Tcb = Tcb(bootloader=10, tee=0, snp=23, microcode=84)
    id_key_digests: tuple[str, ...] = AZURE_ID_KEY_DIGESTS
    id_key_policy: str = "enforce"
    author_key_digests: tuple[str, ...] = ()
    measurements: tuple[str, ...] = ()
    allow_smt: bool = True
    allow_migration_agent: bool = False
    amd_roots: tuple[Product, ...] = PRODUCTS

    def __post_init__(self):
        for name in ("allow_debug", "allow_smt", "allow_migration_agent"):
            if not isinstance(getattr(self, name), bool):
                raise BadInput("policy", f"{name}: expected True or False, got {getattr(self, name)!r}")
        if not (isinstance(self.vmpl, int) and 0 <= self.vmpl <= 3):
            raise BadInput("policy", f"vmpl: expected 0..3, got {self.vmpl!r}")
        for name in ("min_tcb_milan", "min_tcb_genoa"):
            if not isinstance(getattr(self, name), Tcb):
                raise BadInput("policy", f"{name}: expected a Tcb, got {getattr(self, name)!r}")
        for name in ("id_key_digests", "author_key_digests", "measurements"):
            _digest_list(getattr(self, name), "policy", name)
        if self.id_key_policy not in ENFORCEMENT:
            raise BadInput("policy", f"id_key_policy: expected one of {', '.join(ENFORCEMENT)}, got {self.id_key_policy!r}")
        if not (isinstance(self.amd_roots, tuple) and self.amd_roots and all(isinstance(p, Product) for p in self.amd_roots)):
            raise BadInput("policy", "amd_roots: expected a non-empty tuple of azure_cvm.Product")

    def min_tcb(self, product: str) -> Tcb | None:
        return {"Milan": self.min_tcb_milan, "Genoa": self.min_tcb_genoa}.get(product)

    @classmethod
    def from_json(cls, doc, where: str = "policy") -> SnpPolicy:
        """{"allow_debug", "vmpl", "min_tcb_milan": {bootloader, tee, snp, microcode}, "min_tcb_genoa",
        "id_key_digests" (replaces the shipped list), "extra_id_key_digests" (adds to it),
        "id_key_policy", "author_key_digests", "measurements", "allow_smt", "allow_migration_agent"};
        fields left out keep their defaults."""
        if not isinstance(doc, dict):
            raise BadInput(where, "expected a JSON object")
        known = {"allow_debug", "vmpl", "min_tcb_milan", "min_tcb_genoa", "id_key_digests", "extra_id_key_digests",
                 "id_key_policy", "author_key_digests", "measurements", "allow_smt", "allow_migration_agent"}
        unknown = set(doc) - known
        if unknown:
            raise BadInput(where, f"unknown field {sorted(unknown, key=str)[0]!r}")
        fields = dict(doc)
        for name in ("min_tcb_milan", "min_tcb_genoa"):
            if name in fields:
                tcb = fields[name]
                keys = ("bootloader", "tee", "snp", "microcode")
                if not (isinstance(tcb, dict) and set(tcb) == set(keys)
                        and all(isinstance(tcb[k], int) and not isinstance(tcb[k], bool) and 0 <= tcb[k] <= 255
                                for k in keys)):
                    raise BadInput(where, f"{name}: expected {{bootloader, tee, snp, microcode}}, each 0..255")
                fields[name] = Tcb(**tcb)
        for name in ("id_key_digests", "extra_id_key_digests", "author_key_digests", "measurements"):
            if name in fields:
                fields[name] = _digest_list(fields[name], where, name)
        extra = fields.pop("extra_id_key_digests", ())
        base = fields.get("id_key_digests", AZURE_ID_KEY_DIGESTS)
        fields["id_key_digests"] = tuple(dict.fromkeys(base + extra))
        try:
            return cls(**fields)
        except BadInput as e:
            raise BadInput(where, e.what) from None


# ---------------------------------------------------------------------------- parsing

@dataclass(frozen=True)
class SnpReport:
    raw: bytes  # 1184 bytes
    version: int
    policy: int
    vmpl: int
    signature_algo: int
    flags: int  # 0x48: AUTHOR_KEY_EN, MASK_CHIP_KEY, SIGNING_KEY
    report_data: bytes  # 64 bytes
    measurement: bytes  # 48 bytes: the launch digest
    id_key_digest: bytes  # 48 bytes: sha384 of the key that signed the ID block (zero: no ID block)
    author_key_digest: bytes  # 48 bytes: sha384 of the author key that signed the ID key
    reported_tcb: Tcb
    chip_id: bytes
    r: int
    s: int

    @property
    def signing_key(self) -> int:
        return (self.flags >> 2) & 7

    @property
    def signed(self) -> bytes:
        return self.raw[:SIGNED_PART]


@dataclass(frozen=True)
class HclReport:
    report: SnpReport
    hash_type: str
    runtime_data: bytes  # exactly the bytes whose hash is report_data
    ak_jwk: dict | None  # the runtime data's HCLAkPub entry


def parse_snp_report(raw: bytes, where: str) -> SnpReport:
    if len(raw) != SNP_REPORT:
        raise BadInput(where, f"SNP report: {len(raw)} bytes, expected {SNP_REPORT}")
    version, _svn, policy = struct.unpack_from("<IIQ", raw, 0x00)
    if not 2 <= version <= 5:
        raise BadInput(where, f"SNP report: version {version} is not a known ATTESTATION_REPORT version (2..5)")
    vmpl, algo = struct.unpack_from("<II", raw, 0x30)
    flags = struct.unpack_from("<I", raw, 0x48)[0]
    r = int.from_bytes(raw[0x2A0:0x2A0 + 72], "little")
    s = int.from_bytes(raw[0x2A0 + 72:0x2A0 + 144], "little")
    return SnpReport(raw, version, policy, vmpl, algo, flags, raw[0x50:0x90], raw[0x90:0xC0], raw[0xE0:0x110],
                     raw[0x110:0x140], Tcb.from_u64(raw[0x180:0x188]), raw[0x1A0:0x1E0], r, s)


def _b64url_int(jwk: dict, name: str, where: str) -> int:
    value = jwk.get(name)
    if not isinstance(value, str) or len(value) > 2048:
        raise BadInput(where, f"runtime data: HCLAkPub.{name} is not a base64url string")
    try:
        return int.from_bytes(base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)), "big")
    except (binascii.Error, ValueError):
        raise BadInput(where, f"runtime data: HCLAkPub.{name} is not valid base64url") from None


def parse_hcl_report(data, where: str = "evidence: hcl_report") -> HclReport:
    """Split NV 0x01400001 into its SNP report and runtime data; malformed input is a BadInput."""
    if not isinstance(data, (bytes, bytearray)):
        raise BadInput(where, f"expected bytes, got {type(data).__name__}")
    data = bytes(data)
    if len(data) > MAX_HCL_REPORT:
        raise BadInput(where, f"{len(data)} bytes; an HCL report is at most {MAX_HCL_REPORT}")
    fixed = HCL_HEADER + SNP_REPORT + IGVM_HEADER
    if len(data) < fixed:
        raise BadInput(where, f"truncated: {len(data)} bytes, the fixed part alone is {fixed}")
    if data[:4] != b"HCLA":
        raise BadInput(where, f"signature is {data[:4]!r}, not b'HCLA' (not an HCL report)")
    report = parse_snp_report(data[HCL_HEADER:HCL_HEADER + SNP_REPORT], where)
    off = HCL_HEADER + SNP_REPORT
    data_size, _version, report_type, hash_type, var_size = struct.unpack_from("<IIIII", data, off)
    if report_type != SNP_REPORT_TYPE:
        kind = "a TDX report" if report_type == TDX_REPORT_TYPE else f"report type {report_type}"
        raise BadInput(where, f"IGVM request data: {kind}, not SEV-SNP ({SNP_REPORT_TYPE})")
    if hash_type not in HASH_TYPES:
        raise BadInput(where, f"IGVM request data: unknown report_data hash type {hash_type}")
    if data_size != IGVM_HEADER + var_size or off + IGVM_HEADER + var_size > len(data):
        raise BadInput(where, f"IGVM request data: runtime data of {var_size} bytes does not fit "
                              f"(data_size {data_size}, {len(data) - off - IGVM_HEADER} bytes left)")
    runtime = data[off + IGVM_HEADER:off + IGVM_HEADER + var_size]
    try:
        doc = json.loads(runtime.decode("utf-8"))
    except (ValueError, RecursionError):  # bad UTF-8, bad JSON, an integer of thousands of digits
        raise BadInput(where, "runtime data: not UTF-8 JSON") from None
    keys = doc.get("keys") if isinstance(doc, dict) else None
    if not isinstance(keys, list):
        raise BadInput(where, "runtime data: no 'keys' list (not the HCL's runtime data JSON)")
    jwk = next((k for k in keys if isinstance(k, dict) and k.get("kid") == "HCLAkPub"), None)
    if jwk is not None and jwk.get("kty") == "RSA":
        _b64url_int(jwk, "n", where), _b64url_int(jwk, "e", where)  # malformed → BadInput now
    return HclReport(report, HASH_TYPES[hash_type], runtime, jwk)


def _jwk_key(jwk: dict | None):
    if not jwk or jwk.get("kty") != "RSA":
        return None
    n, e = _b64url_int(jwk, "n", ""), _b64url_int(jwk, "e", "")
    try:
        return rsa.RSAPublicNumbers(e, n).public_key()
    except ValueError:
        return None


def _der_small_int(raw: bytes) -> int | None:
    """A DER INTEGER 0..255 (how the VCEK's SPL extensions are encoded), else None."""
    if len(raw) < 3 or raw[0] != 0x02 or raw[1] != len(raw) - 2 or raw[1] > 2:
        return None
    value = int.from_bytes(raw[2:], "big", signed=True)
    return value if 0 <= value <= 255 else None


def vcek_tcb(vcek: x509.Certificate) -> tuple[Tcb | None, bytes | None]:
    """The TCB the VCEK was derived for, and its hwID (the chip id), from its extensions."""
    def ext(oid):
        try:
            return vcek.extensions.get_extension_for_oid(oid).value.value
        except (x509.ExtensionNotFound, AttributeError):
            return None

    spls = [ext(oid) for oid in (OID_BL_SPL, OID_TEE_SPL, OID_SNP_SPL, OID_UCODE_SPL)]
    values = [_der_small_int(v) if v is not None else None for v in spls]
    tcb = Tcb(*values) if None not in values else None
    return tcb, ext(OID_HWID)


# ---------------------------------------------------------------------------- checks

def _firmware_rows(report: SnpReport, policy: SnpPolicy) -> list[Row]:
    """Which firmware was launched: Azure's paravisor, by the key that signed its ID block."""
    id_key = report.id_key_digest.hex()
    known = id_key in policy.id_key_digests
    rows = [Row("snp id key", "an Azure paravisor ID key: " + " | ".join(policy.id_key_digests), id_key,
                policy.id_key_policy, "ok" if known else "MISMATCH" if policy.id_key_policy == "enforce" else "warn")]
    author = report.author_key_digest.hex()
    if report.flags & FLAG_AUTHOR_KEY_EN:
        ok = author in policy.author_key_digests
        expected = " | ".join(policy.author_key_digests) or "none accepted (Azure signs its ID block without one)"
        rows.append(Row("snp author key", expected, f"AUTHOR_KEY_EN, {author}", "enforce", "ok" if ok else "MISMATCH"))
    else:
        ok = not any(report.author_key_digest)
        rows.append(Row("snp author key", "AUTHOR_KEY_EN clear, digest zero", f"clear, {author}", "enforce",
                        "ok" if ok else "MISMATCH"))
    measurement = report.measurement.hex()
    if policy.measurements:
        rows.append(Row("snp measurement", " | ".join(policy.measurements), measurement, "enforce",
                        "ok" if measurement in policy.measurements else "MISMATCH"))
    else:
        rows.append(Row("snp measurement", "not pinned (the ID key signed it)", measurement, "info", "ok"))
    return rows


def product_of(vcek: x509.Certificate, roots: tuple[Product, ...] = PRODUCTS) -> Product | None:
    """The product whose ASK names the VCEK's issuer (only a name: `_vcek_chain` checks signatures)."""
    return next((p for p in roots if p.ask.subject == vcek.issuer), None)


def _vcek_chain(chain: list[x509.Certificate], now: datetime,
                roots: tuple[Product, ...] = PRODUCTS) -> tuple[Product | None, str]:
    """The product when VCEK ← ASK ← pinned ARK verifies at `now`, else None and why not."""
    vcek, rest = chain[0], chain[1:]
    product = product_of(vcek, roots)
    if product is None:
        return None, f"VCEK issuer {certs.cn(vcek.issuer)} is not AMD's SEV-Milan or SEV-Genoa ASK"
    if weak := [certs.weak_signature(c) for c in (*chain, product.ask, product.ark) if certs.weak_signature(c)]:
        return None, "; ".join(weak)
    for cert in rest:
        if cert.subject == cert.issuer and cert != product.ark:
            return None, f"the ARK in the evidence ({certs.cn(cert)}) is not AMD's ARK-{product.name}"
    ask = next((c for c in rest if c.subject == vcek.issuer), product.ask)
    if not certs.issued_by(product.ark, product.ark):
        return None, f"ARK-{product.name} is not self-signed"
    if not certs.issued_by(ask, product.ark):
        return None, f"the ASK {certs.cn(ask)} is not signed by AMD's ARK-{product.name}"
    if not certs.issued_by(vcek, ask):
        return None, f"the VCEK is not signed by the ASK {certs.cn(ask)}"
    problems = [p for p in (certs.validity_problem(c, now) for c in (vcek, ask, product.ark)) if p]
    if problems:
        return None, "; ".join(problems)
    return product, f"VCEK ← {certs.cn(ask)} ← ARK-{product.name}"


def _report_signature(report: SnpReport, vcek: x509.Certificate) -> str | None:
    """None when the VCEK signed the report, else why not."""
    if report.signature_algo != ECDSA_P384_SHA384:
        return f"signature algorithm {report.signature_algo}, expected 1 (ECDSA P-384 SHA-384)"
    if report.signing_key != SIGNING_KEY_VCEK or report.flags & FLAG_MASK_CHIP_KEY:
        return f"flags 0x{report.flags:x}: the report says it is not signed by the VCEK"
    key = vcek.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp384r1":
        return "the VCEK key is not ECDSA P-384"
    try:
        key.verify(encode_dss_signature(report.r, report.s), report.signed, ec.ECDSA(hashes.SHA384()))
    except InvalidSignature:
        return "invalid"
    return None


def check_ak(evidence, ak_key, *, now: datetime | None = None, policy: SnpPolicy | None = None) -> list[Row]:
    """Rows for "is this AK the vTPM AK of a genuine SEV-SNP confidential VM on Azure?"; the `ak`
    row is the verdict."""
    evidence = certs.evidence_arg(evidence)
    key = certs.ak_key_arg(ak_key)
    now = certs.now_arg(now)
    policy = SnpPolicy() if policy is None else policy
    if not isinstance(policy, SnpPolicy):
        raise BadInput("policy", f"expected an SnpPolicy, got {type(policy).__name__}")
    verdict = "AK certified by AMD SEV-SNP (ARK → ASK → VCEK → report → HCL runtime data)"
    missing = [name for name in ("hcl_report", "vcek_chain") if getattr(evidence, name) is None]
    if missing:
        return [Row("ak", verdict, f"missing from the evidence: {', '.join(missing)}", "enforce", "MISMATCH")]

    hcl = parse_hcl_report(evidence.hcl_report)
    chain = certs.pem_bundle(evidence.vcek_chain, "evidence: vcek_chain")
    report, vcek = hcl.report, chain[0]
    rows = []

    chained, how = _vcek_chain(chain, now, policy.amd_roots)
    rows.append(Row("snp vcek chain", f"VCEK ← ASK ← AMD ARK (Milan or Genoa) valid at {now:%Y-%m-%d}", how,
                    "enforce", "ok" if chained else "MISMATCH"))

    problem = _report_signature(report, vcek)
    rows.append(Row("snp signature", "ECDSA P-384 by the VCEK", problem or "valid", "enforce",
                    "ok" if problem is None else "MISMATCH"))

    tcb, hwid = vcek_tcb(vcek)
    tcb_ok = tcb == report.reported_tcb
    hwid_ok = hwid is not None and hmac.compare_digest(hwid, report.chip_id)
    rows.append(Row("snp vcek tcb", f"VCEK: {tcb or 'no SPL extensions'}, hwID {(hwid or b'').hex()[:16]}…",
                    f"report: {report.reported_tcb}, chip_id {report.chip_id.hex()[:16]}…", "enforce",
                    "ok" if tcb_ok and hwid_ok else "MISMATCH"))

    # all 64 bytes: the hash, then zeros (what the HCL writes; nothing else may ride along)
    digest = hashlib.new(hcl.hash_type, hcl.runtime_data).digest()
    expected_data = digest.ljust(len(report.report_data), b"\0")
    rows.append(Row("snp report_data", f"{hcl.hash_type}(runtime data) {digest.hex()}, then zeros",
                    report.report_data.hex(), "enforce",
                    "ok" if hmac.compare_digest(expected_data, report.report_data) else "MISMATCH"))

    rows += _firmware_rows(report, policy)

    hcl_ak = _jwk_key(hcl.ak_jwk)
    if hcl_ak is None:
        rows.append(Row("snp HCLAkPub", certs.key_text(key), "no RSA HCLAkPub in the runtime data", "enforce",
                        "missing"))
    else:
        same = certs.spki(hcl_ak) == certs.spki(key)
        rows.append(Row("snp HCLAkPub", certs.key_text(key), certs.key_text(hcl_ak), "enforce",
                        "ok" if same else "MISMATCH"))

    debug = bool(report.policy & POLICY_DEBUG)
    rows.append(Row("snp debug", "debug allowed" if policy.allow_debug else "debug disallowed (policy bit 19 clear)",
                    f"policy 0x{report.policy:x}: debug {'allowed' if debug else 'disallowed'}", "enforce",
                    "ok" if policy.allow_debug or not debug else "MISMATCH"))
    ma, smt = bool(report.policy & POLICY_MIGRATE_MA), bool(report.policy & POLICY_SMT)
    refused = [what for what, on, allowed in (("migration agent", ma, policy.allow_migration_agent),
                                              ("SMT", smt, policy.allow_smt)) if on and not allowed]
    wanted = ", ".join(f"{what} {'allowed' if ok else 'refused'}"
                       for what, ok in (("migration agent", policy.allow_migration_agent), ("SMT", policy.allow_smt)))
    rows.append(Row("snp guest policy", wanted, f"policy 0x{report.policy:x}: migration agent "
                    f"{'allowed' if ma else 'off'}, SMT {'allowed' if smt else 'off'}", "enforce",
                    "MISMATCH" if refused else "ok"))
    rows.append(Row("snp vmpl", str(policy.vmpl), str(report.vmpl), "enforce",
                    "ok" if report.vmpl == policy.vmpl else "MISMATCH"))

    product = product_of(vcek, policy.amd_roots)  # SPLs are numbered per product; a forged VCEK fails the chain row
    minimum = policy.min_tcb(product.name) if product else None
    if minimum is None:
        expected = f"at least the minimum for {product.name if product else 'an unknown product'}"
        rows.append(Row("snp tcb", expected, f"{report.reported_tcb} (no minimum configured)", "enforce", "MISMATCH"))
    else:
        rows.append(Row("snp tcb", f"{product.name} ≥ {minimum}", str(report.reported_tcb), "enforce",
                        "ok" if report.reported_tcb.at_least(minimum) else "MISMATCH"))

    failed = [r.check for r in rows if r.failed]
    if failed:
        return [Row("ak", verdict, f"not certified ({', '.join(failed)} failed)", "enforce", "MISMATCH"), *rows]
    actual = (f"HCLAkPub of the paravisor with ID key {report.id_key_digest.hex()[:16]}… on a {product.name} "
              f"SEV-SNP host, VMPL {report.vmpl}, TCB {report.reported_tcb}")
    return [Row("ak", verdict, actual, "enforce", "ok"), *rows]


def validate(evidence, ak, inputs) -> list[Row]:
    """The registry's entry (choose.check_ak): `ak` a TpmPublic, `inputs` a choose.AkInputs."""
    return check_ak(evidence, ak.key, now=inputs.now, policy=inputs.snp_policy)


def id_key_to_record(evidence, ak_key, where: str) -> str:
    """`record-platform --from-evidence`: the SNP report's ID key digest, once the report passed
    every check but the ID key itself (AMD's chain, signature, HCLAkPub = the quote's AK,
    report_data, policy, TCB): what is recorded was said by a genuine chip about this AK."""
    rows = check_ak(evidence, ak_key, policy=SnpPolicy(id_key_policy="warn"))
    if failed := [r.check for r in rows if r.failed]:
        raise VerificationFailed(f"{where}: the SNP report does not verify ({', '.join(failed)}); nothing recorded")
    return parse_hcl_report(evidence.hcl_report).report.id_key_digest.hex()
