"""TPM 2.0 primitives, the one implementation the build (pipeline/measure), the attestation server
and the client share: PCR extend and the PCR 15 steps, the nonce rule, marshalling and a reader of
TPM structures (TPM2B, TPML_PCR_SELECTION), and the parsers of TPMS_ATTEST / TPMT_SIGNATURE /
TPM2B_PUBLIC, the signature check and the PCR digest of a quote. Checking a quote against
measurements.json is `quote.py`.

All TPM structures are big-endian (TPM 2.0 Library, Part 2). tpm2_quote's `-o` PCR file in its
default "serialized" format is the exception: raw little-endian C structs (see parse_pcr_file).
"""

from __future__ import annotations

import hashlib
import json
import re
import struct
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from .errors import BadInput

TPM_GENERATED_VALUE = 0xFF544347
TPM_ST_ATTEST_QUOTE = 0x8018
ALG_RSA, ALG_SHA256, ALG_NULL, ALG_ECC = 0x0001, 0x000B, 0x0010, 0x0023
HASH_ALGS = {0x0004: "sha1", 0x000B: "sha256", 0x000C: "sha384", 0x000D: "sha512"}
HASH_IDS = {v: k for k, v in HASH_ALGS.items()}
DIGEST_SIZE = {"sha1": 20, "sha256": 32, "sha384": 48, "sha512": 64}
SIG_ALGS = {0x0014: "rsassa", 0x0016: "rsapss", 0x0018: "ecdsa"}
CURVES = {0x0003: ec.SECP256R1(), 0x0004: ec.SECP384R1(), 0x0005: ec.SECP521R1()}
_CRYPTO_HASH = {"sha1": hashes.SHA1, "sha256": hashes.SHA256, "sha384": hashes.SHA384,
                "sha512": hashes.SHA512}

# TPMA_OBJECT bits (TPM 2.0 Part 2, 8.3)
FIXED_TPM, FIXED_PARENT, SENSITIVE_DATA_ORIGIN = 1 << 1, 1 << 4, 1 << 5
USER_WITH_AUTH, ADMIN_WITH_POLICY, NO_DA = 1 << 6, 1 << 7, 1 << 10
RESTRICTED, DECRYPT, SIGN = 1 << 16, 1 << 17, 1 << 18


# ---------------------------------------------------------------------------- PCRs

def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def extend(old: bytes, digest: bytes) -> bytes:
    """TPM2_PCR_Extend in the sha256 bank: new = sha256(old || digest)."""
    if len(old) != 32 or len(digest) != 32:
        raise ValueError(f"a sha256 PCR and digest have 32 bytes, not {len(old)} and {len(digest)}")
    return sha256(old + digest)


# PCR 15 (the application; DESIGN.md "PCR conventions"): measured-setup extends the app disk's
# dm-verity roothash, then SENTINEL once setup is done; measurements.json lists the value after
# that. The attestation server then extends ca_digest(its TLS root CA PEM) once per boot, and a
# verifier replays that step (`with_ca`) with the CA the evidence serves.
TLS_PCR = 15
SENTINEL = bytes(32)


def ca_digest(ca_pem: bytes) -> bytes:
    """What the attestation server extends into PCR 15: sha256 of the exact PEM bytes it serves."""
    return sha256(ca_pem)


def with_ca(value: bytes, ca_pem: bytes) -> bytes:
    """PCR 15 after the attestation server's step, from its value before."""
    return extend(value, ca_digest(ca_pem))


# ---------------------------------------------------------------------------- the nonce

# The client's nonce is a quote's qualifyingData (extraData in TPMS_ATTEST), a TPM2B_DATA: at most
# sizeof(TPMT_HA) bytes, 66 on a TPM that implements SHA-512 (swtpm), 50 or 34 on one whose
# largest hash is SHA-384 or SHA-256. 16 bytes (128 random bits) is the least that keeps a quote
# fresh: a verifier that accepted fewer could be answered with a recorded quote for a guessed or
# repeated nonce. 64, the largest digest, is the most (docs/evidence.md); our clients send 32,
# which every TPM takes. One rule for the server, the SDK and `attest verify --nonce`.
NONCE_MIN, NONCE_MAX = 16, 64
_HEX = re.compile(r"(?:[0-9a-fA-F]{2})*")  # with fullmatch: `$` also matches before a final newline


def check_nonce(nonce: bytes, where: str = "nonce") -> bytes:
    if not NONCE_MIN <= len(nonce) <= NONCE_MAX:
        raise BadInput(where, f"{len(nonce)} bytes; a nonce has {NONCE_MIN} to {NONCE_MAX} bytes")
    return nonce


def parse_nonce(text: str, where: str = "nonce") -> bytes:
    """A nonce as hex text (an even number of hex digits, nothing else) within the rule."""
    if not isinstance(text, str) or not _HEX.fullmatch(text):
        raise BadInput(where, "not an even-length hex string")
    return check_nonce(bytes.fromhex(text), where)


# ---------------------------------------------------------------------------- marshalling

def tpm2b(data: bytes) -> bytes:
    """A TPM2B: a 2-byte big-endian size, then the bytes."""
    if len(data) > 0xFFFF:
        raise ValueError(f"{len(data)} bytes do not fit a TPM2B")
    return struct.pack(">H", len(data)) + data


@dataclass(frozen=True)
class PcrSelection:
    bank: str  # hash name
    pcrs: tuple[int, ...]  # ascending


class Reader:
    """Big-endian cursor over a TPM structure. Running short, an unknown algorithm or bytes left
    over raise `self.fail(message)`: BadInput naming the field here (the input is the caller's);
    the attestation server's subclass raises its TpmError (the TPM answered badly)."""

    def __init__(self, data: bytes, where: str):
        self.data, self.pos, self.where = data, 0, where

    def fail(self, message: str, fix: str = "") -> Exception:
        return BadInput(self.where, message, fix)

    def take(self, n: int, what: str = "a field") -> bytes:
        if self.pos + n > len(self.data):
            raise self.fail(f"truncated: {what} needs {n} bytes at offset {self.pos}, "
                            f"only {len(self.data) - self.pos} left")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def u8(self, what: str = "a u8") -> int:
        return self.take(1, what)[0]

    def u16(self, what: str = "a u16") -> int:
        return struct.unpack(">H", self.take(2, what))[0]

    def u32(self, what: str = "a u32") -> int:
        return struct.unpack(">I", self.take(4, what))[0]

    def u64(self, what: str = "a u64") -> int:
        return struct.unpack(">Q", self.take(8, what))[0]

    def tpm2b(self, what: str = "a TPM2B") -> bytes:
        return self.take(self.u16(what + " size"), what)

    def rest(self) -> bytes:
        return self.take(len(self.data) - self.pos)

    def end(self, what: str) -> None:
        if self.pos != len(self.data):
            raise self.fail(f"{len(self.data) - self.pos} unexpected bytes after the {what}")

    def hash_alg(self, field: str) -> str:
        """A TPMI_ALG_HASH, by name."""
        alg = self.u16(field)
        if alg not in HASH_ALGS:
            raise self.fail(f"{field}: unknown or unsupported hash algorithm 0x{alg:04x}",
                            "supported: sha1, sha256, sha384, sha512")
        return HASH_ALGS[alg]

    def pcr_selection(self, field: str = "pcrSelect") -> tuple[PcrSelection, ...]:
        """A TPML_PCR_SELECTION."""
        count = self.u32(f"{field}.count")
        if count > 16:
            raise self.fail(f"{field}.count: {count} banks is implausible (at most 16)")
        out = []
        for i in range(count):
            bank = self.hash_alg(f"{field}[{i}].hash")
            size = self.u8(f"{field}[{i}].sizeofSelect")
            if size > 4:
                raise self.fail(f"{field}[{i}].sizeofSelect: {size} is larger than 4")
            bitmap = self.take(size, f"{field}[{i}].pcrSelect")
            out.append(PcrSelection(bank, tuple(8 * byte + bit for byte in range(size) for bit in range(8)
                                                if bitmap[byte] >> bit & 1)))
        return tuple(out)


def unwrap_tpm2b(data: bytes, where: str, what: str) -> bytes:
    """The contents of `data`, which must be one TPM2B and nothing after it."""
    r = Reader(data, where)
    inner = r.tpm2b(what)
    r.end(what)
    return inner


def _hash_name(alg: int, where: str, field: str) -> str:
    if alg not in HASH_ALGS:
        raise BadInput(where, f"{field}: unknown or unsupported hash algorithm 0x{alg:04x}",
                       "supported: sha1, sha256, sha384, sha512")
    return HASH_ALGS[alg]


# ---------------------------------------------------------------------------- structures

@dataclass(frozen=True)
class Quote:
    raw: bytes  # the signed bytes (TPMS_ATTEST)
    qualified_signer: bytes
    extra_data: bytes  # the nonce
    clock: int
    reset_count: int
    restart_count: int
    safe: bool
    firmware_version: int
    selections: tuple[PcrSelection, ...]
    pcr_digest: bytes


@dataclass(frozen=True)
class Signature:
    scheme: str  # rsassa | rsapss | ecdsa
    hash: str
    sig: bytes  # RSA signature, or DER-encoded ECDSA (r, s)


def parse_quote(data: bytes, where: str = "quote") -> Quote:
    """Parse a TPMS_ATTEST of type TPM_ST_ATTEST_QUOTE (tpm2_quote -m)."""
    r = Reader(data, where)
    magic = r.u32("magic")
    if magic != TPM_GENERATED_VALUE:
        raise BadInput(where, f"magic is 0x{magic:08x}, not TPM_GENERATED_VALUE 0xff544347",
                       "pass the message file that tpm2_quote -m wrote")
    kind = r.u16("type")
    if kind != TPM_ST_ATTEST_QUOTE:
        raise BadInput(where, f"type is 0x{kind:04x}, not TPM_ST_ATTEST_QUOTE 0x8018 (not a quote)")
    signer = r.tpm2b("qualifiedSigner")
    extra = r.tpm2b("extraData")
    clock, reset, restart, safe = r.u64("clock"), r.u32("resetCount"), r.u32("restartCount"), r.u8("safe")
    firmware = r.u64("firmwareVersion")
    selections = r.pcr_selection("pcrSelect")
    digest = r.tpm2b("pcrDigest")
    r.end("quote")
    return Quote(data, signer, extra, clock, reset, restart, bool(safe), firmware, selections, digest)


def parse_signature(data: bytes, where: str = "signature") -> Signature:
    """Parse a TPMT_SIGNATURE (tpm2_quote -s in its default 'tss' format)."""
    r = Reader(data, where)
    alg = r.u16("sigAlg")
    if alg not in SIG_ALGS:
        raise BadInput(where, f"sigAlg: unknown or unsupported signature algorithm 0x{alg:04x}",
                       "supported: RSASSA, RSAPSS, ECDSA; pass tpm2_quote -s output in 'tss' format")
    scheme = SIG_ALGS[alg]
    hash_name = r.hash_alg("hash")
    if scheme == "ecdsa":
        r_, s_ = r.tpm2b("signatureR"), r.tpm2b("signatureS")
        sig = encode_dss_signature(int.from_bytes(r_, "big"), int.from_bytes(s_, "big"))
    else:
        sig = r.tpm2b("sig")
        if not sig:
            raise BadInput(where, "sig: empty RSA signature")
    r.end("signature")
    return Signature(scheme, hash_name, sig)


@dataclass(frozen=True)
class TpmPublic:
    """A TPMT_PUBLIC: the key, and what the TPM vouches for about it."""

    key: object  # rsa.RSAPublicKey | ec.EllipticCurvePublicKey
    name_alg: str
    attributes: int
    raw: bytes  # the marshalled TPMT_PUBLIC

    @property
    def name(self) -> bytes:
        """The object's name: nameAlg (2 bytes) || H_nameAlg(TPMT_PUBLIC)."""
        return struct.pack(">H", HASH_IDS[self.name_alg]) + hashlib.new(self.name_alg, self.raw).digest()


def parse_public(data: bytes, where: str = "TPM2B_PUBLIC") -> TpmPublic:
    """A TPM2B_PUBLIC (size-prefixed TPMT_PUBLIC), as tpm2_readpublic / tpm2_createak -u write it."""
    inner = Reader(unwrap_tpm2b(data, where, "publicArea"), where)
    public = _parse_tpmt_public(inner)
    inner.end("TPMT_PUBLIC")
    return public


def _parse_tpmt_public(r: Reader) -> TpmPublic:
    where = r.where
    start = r.pos
    kind = r.u16("type")
    name_alg = r.hash_alg("nameAlg")
    attributes = r.u32("objectAttributes")
    r.tpm2b("authPolicy")
    sym = r.u16("parameters.symmetric.algorithm")
    if sym != ALG_NULL:
        r.u16("parameters.symmetric.keyBits")
        r.u16("parameters.symmetric.mode")
    scheme = r.u16("parameters.scheme")
    # every signing scheme (and OAEP) carries a hash; ECDAA also a count; RSAES carries nothing
    if scheme not in (ALG_NULL, 0x0015):
        r.u16("parameters.scheme.hashAlg")
        if scheme == 0x001A:
            r.u16("parameters.scheme.count")
    if kind == ALG_RSA:
        bits = r.u16("parameters.keyBits")
        exponent = r.u32("parameters.exponent") or 65537
        modulus = r.tpm2b("unique")
        if len(modulus) * 8 != bits:
            raise BadInput(where, f"unique: RSA modulus has {len(modulus) * 8} bits, keyBits says {bits}")
        key = rsa.RSAPublicNumbers(exponent, int.from_bytes(modulus, "big")).public_key()
        return TpmPublic(key, name_alg, attributes, r.data[start:r.pos])
    if kind == ALG_ECC:
        curve_id = r.u16("parameters.curveID")
        if curve_id not in CURVES:
            raise BadInput(where, f"parameters.curveID: unsupported curve 0x{curve_id:04x}",
                           "supported: NIST P-256, P-384, P-521")
        if r.u16("parameters.kdf.scheme") != ALG_NULL:
            r.u16("parameters.kdf.hashAlg")
        x, y = r.tpm2b("unique.x"), r.tpm2b("unique.y")
        try:
            key = ec.EllipticCurvePublicNumbers(int.from_bytes(x, "big"), int.from_bytes(y, "big"),
                                                CURVES[curve_id]).public_key()
        except ValueError:
            raise BadInput(where, "unique: the ECC point is not on the curve") from None
        return TpmPublic(key, name_alg, attributes, r.data[start:r.pos])
    raise BadInput(where, f"type: unsupported key type 0x{kind:04x}", "the AK must be an RSA or ECC key")


def load_ak(data: bytes, where: str = "ak-pub"):
    """The AK public key from PEM, DER (SubjectPublicKeyInfo) or TPM2B_PUBLIC (tpm2_createak -u)."""
    if data.lstrip().startswith(b"-----BEGIN"):
        try:
            key = serialization.load_pem_public_key(data)
        except (ValueError, UnsupportedAlgorithm) as e:
            raise BadInput(where, f"not a usable PEM public key: {e}") from None
    elif len(data) >= 2 and struct.unpack(">H", data[:2])[0] == len(data) - 2:
        key = parse_public(data, where).key
    else:
        try:
            key = serialization.load_der_public_key(data)
        except (ValueError, UnsupportedAlgorithm):
            raise BadInput(where, "not a PEM or DER public key, nor a TPM2B_PUBLIC",
                           "pass tpm2_createak -u output (tss or pem format)") from None
    if not isinstance(key, (rsa.RSAPublicKey, ec.EllipticCurvePublicKey)):
        raise BadInput(where, "the AK must be an RSA or ECC key")
    return key


def signature_valid(quote: Quote, sig: Signature, key) -> bool:
    h = _CRYPTO_HASH[sig.hash]()
    try:
        if sig.scheme == "ecdsa":
            if not isinstance(key, ec.EllipticCurvePublicKey):
                return False
            key.verify(sig.sig, quote.raw, ec.ECDSA(h))
        else:
            if not isinstance(key, rsa.RSAPublicKey):
                return False
            pad = (padding.PKCS1v15() if sig.scheme == "rsassa"
                   else padding.PSS(mgf=padding.MGF1(h), salt_length=padding.PSS.AUTO))
            key.verify(sig.sig, quote.raw, pad, h)
    except (InvalidSignature, ValueError):
        return False
    return True


# ---------------------------------------------------------------------------- PCR values

PcrValues = dict[str, dict[int, bytes]]  # bank -> index -> digest


def _digest_value(value, bank: str, where: str, field: str) -> bytes:
    size = DIGEST_SIZE[bank]
    if isinstance(value, int) and not isinstance(value, bool):  # YAML reads 0x… as an integer
        if value < 0 or value.bit_length() > 8 * size:
            raise BadInput(where, f"{field}: value does not fit a {bank} digest")
        return value.to_bytes(size, "big")
    if isinstance(value, str):
        text = value.strip().lower().removeprefix("0x")
        try:
            raw = bytes.fromhex(text)
        except ValueError:
            raise BadInput(where, f"{field}: not a hex string") from None
        if len(raw) != size:
            raise BadInput(where, f"{field}: {len(raw)} bytes, a {bank} digest has {size}")
        return raw
    raise BadInput(where, f"{field}: expected a hex string, got {type(value).__name__}")


def _values_from_mapping(doc, where: str) -> PcrValues:
    if isinstance(doc, dict) and "pcrs" in doc and isinstance(doc["pcrs"], dict):
        doc = doc["pcrs"]  # tpm2_quote's stdout: {quoted, signature, pcrs: {sha256: {...}}}
    if not isinstance(doc, dict) or not doc:
        raise BadInput(where, "expected a mapping of bank -> {PCR index: hex value}")
    if all(str(k).isascii() and str(k).isdigit() for k in doc):
        doc = {"sha256": doc}  # a flat {index: value} means the sha256 bank
    out: PcrValues = {}
    for bank, values in doc.items():
        if bank not in DIGEST_SIZE:
            raise BadInput(where, f"{bank}: unknown PCR bank", "use sha1, sha256, sha384 or sha512")
        if not isinstance(values, dict):
            raise BadInput(where, f"{bank}: expected a mapping of PCR index -> hex value")
        out[bank] = {}
        for index, value in values.items():
            if not (str(index).isascii() and str(index).isdigit()) or int(index) > 23:
                raise BadInput(where, f"{bank}.{index}: PCR index must be 0..23")
            out[bank][int(index)] = _digest_value(value, bank, where, f"{bank}.{index}")
    return out


def _values_from_serialized(data: bytes, where: str) -> PcrValues:
    """tpm2-tools' 'serialized' PCR file: TPML_PCR_SELECTION as a little-endian C struct
    (u32 count, 16 x {u16 hash, u8 sizeofSelect, u8 pcrSelect[4], 1 pad}), u32 count of TPML_DIGEST,
    then that many TPML_DIGEST structs (u32 count, 8 x {u16 size, u8 buffer[64]})."""
    sel_size, tpml_digest_size = 4 + 16 * 8, 4 + 8 * 66
    if len(data) < sel_size + 4:
        raise BadInput(where, f"{len(data)} bytes is too short for a tpm2_quote PCR file")
    nbanks = struct.unpack_from("<I", data, 0)[0]
    if nbanks > 16:
        raise BadInput(where, f"bank count {nbanks} is implausible (not a tpm2_quote -o PCR file?)")
    order: list[tuple[str, int]] = []
    for i in range(nbanks):
        alg, size = struct.unpack_from("<HB", data, 4 + 8 * i)
        bank = _hash_name(alg, where, f"pcrSelections[{i}].hash")
        bitmap = data[4 + 8 * i + 3:4 + 8 * i + 3 + min(size, 4)]
        order += [(bank, 8 * b + bit) for b in range(len(bitmap)) for bit in range(8) if bitmap[b] >> bit & 1]
    ndigests = struct.unpack_from("<I", data, sel_size)[0]
    if len(data) != sel_size + 4 + ndigests * tpml_digest_size:
        raise BadInput(where, f"size {len(data)} does not match {ndigests} digest lists (truncated?)")
    digests: list[bytes] = []
    for j in range(ndigests):
        base = sel_size + 4 + j * tpml_digest_size
        count = struct.unpack_from("<I", data, base)[0]
        if count > 8:
            raise BadInput(where, f"digest list {j}: count {count} is larger than 8")
        for k in range(count):
            size = struct.unpack_from("<H", data, base + 4 + 66 * k)[0]
            if size > 64:
                raise BadInput(where, f"digest list {j}[{k}]: size {size} is larger than 64")
            digests.append(data[base + 6 + 66 * k:base + 6 + 66 * k + size])
    if len(digests) != len(order):
        raise BadInput(where, f"{len(digests)} digests for {len(order)} selected PCRs")
    out: PcrValues = {}
    for (bank, index), digest in zip(order, digests):
        if len(digest) != DIGEST_SIZE[bank]:
            raise BadInput(where, f"{bank}.{index}: {len(digest)} bytes, a {bank} digest has {DIGEST_SIZE[bank]}")
        out.setdefault(bank, {})[index] = digest
    return out


def parse_pcr_file(data: bytes, where: str, selections: tuple[PcrSelection, ...] = ()) -> PcrValues:
    """PCR values from JSON or YAML ({bank: {index: hex}}, tpm2_pcrread / tpm2_quote stdout), or
    from tpm2_quote -o in 'serialized' (default) or 'values' format (the latter needs the quote's
    selection to know which value is which)."""
    text = None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        pass
    if text is not None and "\0" not in text and text.strip():  # binary formats always hold NULs
        if text.lstrip().startswith(("{", "[")):
            try:
                doc = json.loads(text)
            except json.JSONDecodeError as e:
                raise BadInput(where, f"not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})") from None
            except (ValueError, RecursionError):  # an integer of thousands of digits, deep nesting
                raise BadInput(where, "not usable JSON (a huge number or deep nesting)") from None
        else:
            import yaml  # tpm2-tools' YAML output; only `attest verify` reads it, the client SDK never does

            try:
                doc = yaml.safe_load(text)
            except yaml.YAMLError as e:
                problem = str(getattr(e, "problem", None) or e).splitlines()[0]
                raise BadInput(where, f"not valid YAML: {problem}") from None
            except (ValueError, RecursionError):
                raise BadInput(where, "not usable YAML (a huge number or deep nesting)") from None
        return _values_from_mapping(doc, where)
    order = [(s.bank, i) for s in selections for i in s.pcrs]
    if order and len(data) == sum(DIGEST_SIZE[b] for b, _ in order):
        out: PcrValues = {}
        pos = 0
        for bank, index in order:
            out.setdefault(bank, {})[index] = data[pos:pos + DIGEST_SIZE[bank]]
            pos += DIGEST_SIZE[bank]
        return out
    return _values_from_serialized(data, where)


def pcr_digest(selections: tuple[PcrSelection, ...], values: PcrValues, hash_name: str) -> bytes | None:
    """The digest the TPM signs: H(selected values in selection order); None if a value is missing."""
    h = hashlib.new(hash_name)
    for sel in selections:
        for index in sel.pcrs:
            value = values.get(sel.bank, {}).get(index)
            if value is None:
                return None
            h.update(value)
    return h.digest()
