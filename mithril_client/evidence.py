"""The evidence document the attestation server returns for `GET /attestation?nonce=HEX`
(format: docs/evidence.md, schema: docs/evidence.schema.json), decoded and range-checked.

Everything here is untrusted input: every field is type- and size-checked and a bad one is a
BadInput naming the field (exit 2), never an exception of another kind.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass

from .errors import BadInput
from .platforms import NAMES as PLATFORMS
from .tpm2 import DIGEST_SIZE, parse_nonce

VERSION = 1
VERSIONS = (1, 2)  # 2: with GPU evidence (mithril_client.gpu.evidence)
MAX_DOCUMENT = 1 << 20  # 1 MiB: real evidence is a few KiB
_HEX = re.compile(r"[0-9a-fA-F]*")  # always with fullmatch: `$` also matches before a final newline
_PEM = re.compile(r"-----BEGIN ([A-Z ]+)-----")
MAX_GPUS = 8  # version 2: GPUs in one document


@dataclass(frozen=True)
class GpuEvidence:
    """One GPU's part of a version 2 document (checked by mithril_client.gpu.evidence)."""

    report: bytes  # SPDM GET_MEASUREMENTS request + response, as NVML returned it
    cert_chain: bytes  # PEM, as NVML returned it


@dataclass(frozen=True)
class Evidence:
    platform: str
    nonce: bytes
    quote: bytes  # TPMS_ATTEST
    signature: bytes  # TPMT_SIGNATURE
    pcrs: dict[str, dict[int, bytes]]  # bank -> index -> value
    ak_pub: bytes  # PEM
    ak_public: bytes  # TPM2B_PUBLIC of the AK (its name is what credential activation binds)
    tls_ca: bytes  # PEM, exactly the bytes extended into PCR 15
    ek_cert: bytes | None = None  # PEM (qemu)
    ak_cert: bytes | None = None  # PEM (Azure vTPM AK certificate, NV 0x01C101D0)
    hcl_report: bytes | None = None  # raw NV 0x01400001 (Azure confidential VMs)
    vcek_chain: bytes | None = None  # PEM: VCEK, ASK, ARK (Azure confidential VMs)
    version: int = 1
    gpus: tuple = ()  # version 2: a GpuEvidence per GPU, in the server's order


def _str(doc: dict, key: str, where: str, required: bool = True) -> str | None:
    value = doc.get(key)
    if value is None:
        if required:
            raise BadInput(where, f"{key}: required field is missing")
        return None
    if not isinstance(value, str):
        raise BadInput(where, f"{key}: expected a string, got {type(value).__name__}")
    return value


def _b64(doc: dict, key: str, where: str, required: bool = True) -> bytes | None:
    text = _str(doc, key, where, required)
    if text is None:
        return None
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise BadInput(where, f"{key}: not valid base64") from None
    if not data:
        raise BadInput(where, f"{key}: empty")
    return data


def _pem(doc: dict, key: str, where: str, required: bool = True) -> bytes | None:
    text = _str(doc, key, where, required)
    if text is None:
        return None
    if not text.isascii() or not _PEM.search(text):
        raise BadInput(where, f"{key}: not PEM (no -----BEGIN … ----- line)")
    return text.encode()


def _pcrs(doc: dict, where: str) -> dict[str, dict[int, bytes]]:
    raw = doc.get("pcrs")
    if not isinstance(raw, dict) or not raw:
        raise BadInput(where, "pcrs: expected an object {bank: {index: hex}}")
    out: dict[str, dict[int, bytes]] = {}
    for bank, values in raw.items():
        if bank not in DIGEST_SIZE:
            raise BadInput(where, f"pcrs.{bank}: unknown bank (sha1, sha256, sha384, sha512)")
        if not isinstance(values, dict):
            raise BadInput(where, f"pcrs.{bank}: expected an object {{index: hex}}")
        out[bank] = {}
        for index, value in values.items():
            if not (isinstance(index, str) and index.isascii() and index.isdigit() and str(int(index)) == index and int(index) <= 23):
                raise BadInput(where, f"pcrs.{bank}.{index}: PCR index must be 0..23 in ASCII digits")
            if not (isinstance(value, str) and _HEX.fullmatch(value) and len(value) == 2 * DIGEST_SIZE[bank]):
                raise BadInput(where, f"pcrs.{bank}.{index}: expected {2 * DIGEST_SIZE[bank]} hex digits")
            out[bank][int(index)] = bytes.fromhex(value)
    return out


def parse_evidence(data: bytes | str, where: str = "evidence") -> Evidence:
    """Decode an evidence document (JSON bytes); BadInput names the field that is wrong."""
    if isinstance(data, str):
        data = data.encode()
    if len(data) > MAX_DOCUMENT:
        raise BadInput(where, f"{len(data)} bytes; an evidence document is at most {MAX_DOCUMENT} bytes")
    try:
        doc = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise BadInput(where, "not UTF-8 text") from None
    except json.JSONDecodeError as e:
        raise BadInput(where, f"not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})") from None
    except (ValueError, RecursionError) as e:  # e.g. an integer of more than 4300 digits
        raise BadInput(where, f"not usable JSON: {str(e).splitlines()[0][:120]}") from None
    if not isinstance(doc, dict):
        raise BadInput(where, "must be a JSON object")
    if type(doc.get("version")) is not int or doc["version"] not in VERSIONS:  # not True, not 1.0
        raise BadInput(where, f"version: expected one of {VERSIONS}, got {doc.get('version')!r}",
                       "the server and this client speak different evidence versions")
    platform = _str(doc, "platform", where)
    if platform not in PLATFORMS:
        raise BadInput(where, f"platform: {platform!r} is not one of {', '.join(PLATFORMS)}")
    return Evidence(
        platform=platform,
        nonce=parse_nonce(_str(doc, "nonce", where), f"{where}: nonce"),
        quote=_b64(doc, "quote", where),
        signature=_b64(doc, "signature", where),
        pcrs=_pcrs(doc, where),
        ak_pub=_pem(doc, "ak_pub", where),
        ak_public=_b64(doc, "ak_public", where),
        tls_ca=_pem(doc, "tls_ca", where),
        ek_cert=_pem(doc, "ek_cert", where, required=False),
        ak_cert=_pem(doc, "ak_cert", where, required=False),
        hcl_report=_b64(doc, "hcl_report", where, required=False),
        vcek_chain=_pem(doc, "vcek_chain", where, required=False),
        version=doc["version"],
        gpus=_gpus(doc, where),
    )


def _gpus(doc: dict, where: str) -> tuple:
    """Version 2: `gpus`, a list of {report: base64, cert_chain: PEM}; version 1 has none."""
    raw = doc.get("gpus")
    if doc["version"] == 1:
        if raw is not None:
            raise BadInput(where, "gpus: only in evidence version 2")
        return ()
    if not isinstance(raw, list) or not 1 <= len(raw) <= MAX_GPUS:
        raise BadInput(where, f"gpus: expected a list of 1 to {MAX_GPUS} objects {{report, cert_chain}}")
    out = []
    for i, entry in enumerate(raw):
        if not isinstance(entry, dict) or set(entry) != {"report", "cert_chain"}:
            raise BadInput(where, f"gpus[{i}]: expected exactly {{report, cert_chain}}")
        at = f"{where}: gpus[{i}]"
        out.append(GpuEvidence(_b64(entry, "report", at), _pem(entry, "cert_chain", at)))
    return tuple(out)
