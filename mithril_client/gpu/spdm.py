"""The GPU attestation report NVML returns (nvmlDeviceGetConfComputeGpuAttestationReport): the
SPDM GET_MEASUREMENTS request the driver sent, followed by the GPU's MEASUREMENTS response,
signed by the GPU's attestation key (DMTF DSP0274 SPDM 1.1, sections 10.11-10.12; NVIDIA's
opaque-data fields as nv-local-gpu-verifier 2.7.3 reads them).

request  (37 bytes): SPDMVersion, 0xE0 (GET_MEASUREMENTS), Param1 (bit 0: signature requested),
                     Param2 (0xFF: all blocks), Nonce (32), SlotIDParam
response:            SPDMVersion, 0x60 (MEASUREMENTS), Param1, Param2, NumberOfBlocks (1),
                     MeasurementRecordLength (3, LE), MeasurementRecord, Nonce (32, the GPU's),
                     OpaqueLength (2, LE), OpaqueData, Signature (96: ECDSA P-384 r || s)
measurement block:   Index (1), MeasurementSpecification (1: DMTF), MeasurementSize (2, LE),
                     then DMTF: ValueType (1), ValueSize (2, LE), Value
opaque data:         repeated Type (2, LE), Size (2, LE), Value

The signature covers request || response without its last 96 bytes. Everything here is
untrusted input; a malformed report is a BadInput naming the field.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import BadInput

REQUEST_LEN = 37
SIGNATURE_LEN = 96  # Hopper: ECDSA P-384, r || s
NONCE_LEN = 32
GET_MEASUREMENTS, MEASUREMENTS = 0xE0, 0x60
DMTF_SPEC = 0x01
MAX_REPORT = 64 * 1024  # the sample is 4117 bytes

# NVIDIA's opaque-data field types (the numbers nv-local-gpu-verifier 2.7.3 names)
OPAQUE = {
    1: "cert_issuer_name", 2: "cert_authority_key_identifier", 3: "driver_version", 4: "gpu_info",
    5: "sku", 6: "vbios_version", 7: "manufacturer_id", 8: "tamper_detection", 9: "smc", 10: "vpr",
    11: "nvdec0_status", 12: "msrscnt", 13: "cprinfo", 14: "board_id", 15: "chip_sku", 16: "chip_sku_mod",
    17: "project", 18: "project_sku", 19: "project_sku_mod", 20: "fwid", 21: "protected_pcie_status",
    22: "switch_pdi", 23: "floorswept_ports", 24: "position_id", 25: "lock_switch_status",
    32: "gpu_link_conn", 33: "sys_enable_status", 34: "opaque_data_version", 35: "chip_info",
    36: "feature_flag",
}
ENABLED, DISABLED = 0xAA, 0x55  # NVDEC0 / protected-PCIe status bytes
FEATURE_FLAGS = {0: "SPT", 1: "MPT", 2: "PPCIE"}  # single-/multi-GPU passthrough, protected PCIe


@dataclass(frozen=True)
class Block:
    index: int  # 1-based SPDM index; NVIDIA's RIMs number the same block index - 1
    value_type: int
    value: bytes


@dataclass(frozen=True)
class Report:
    raw: bytes
    request: bytes
    response: bytes
    spdm_version: int
    request_nonce: bytes
    param1: int
    param2: int
    blocks: dict[int, Block]
    responder_nonce: bytes
    opaque: dict[int, bytes]
    signature: bytes

    @property
    def signed_data(self) -> bytes:
        return self.request + self.response[:-SIGNATURE_LEN]

    def field(self, name: str) -> bytes | None:
        number = next(k for k, v in OPAQUE.items() if v == name)
        return self.opaque.get(number)

    @property
    def driver_version(self) -> str | None:
        raw = self.field("driver_version")
        return None if raw is None else _ascii(raw)

    @property
    def vbios_version(self) -> str | None:
        raw = self.field("vbios_version")
        return None if raw is None or len(raw) < 5 else vbios_text(raw)

    def text(self, name: str) -> str | None:
        raw = self.field(name)
        return None if raw is None else _ascii(raw)


def vbios_text(raw: bytes) -> str:
    """The opaque VBIOS version as nvidia-smi prints it: the first four bytes as a little-endian
    32-bit number written as four dotted hex bytes, then the fifth byte (009f009601… -> 96.00.9f.00.01)."""
    major = int.from_bytes(raw[:4], "little").to_bytes(4, "big")
    return ".".join(f"{b:02x}" for b in major + raw[4:5])


def _ascii(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode("ascii", errors="replace").strip()


def _le(data: bytes) -> int:
    return int.from_bytes(data, "little")


class _Reader:
    def __init__(self, data: bytes, where: str, part: str):
        self.data, self.pos, self.where, self.part = data, 0, where, part

    def take(self, n: int, field: str) -> bytes:
        if self.pos + n > len(self.data):
            raise BadInput(self.where, f"{self.part}.{field}: truncated ({len(self.data) - self.pos} bytes left, "
                                       f"{n} needed)")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    @property
    def left(self) -> int:
        return len(self.data) - self.pos


def parse_report(raw: bytes, where: str = "report") -> Report:
    if not isinstance(raw, (bytes, bytearray)):
        raise BadInput(where, f"expected bytes, got {type(raw).__name__}")
    raw = bytes(raw)
    if len(raw) > MAX_REPORT:
        raise BadInput(where, f"{len(raw)} bytes; a GPU attestation report is at most {MAX_REPORT}")
    if len(raw) < REQUEST_LEN + 8 + NONCE_LEN + 2 + SIGNATURE_LEN:
        raise BadInput(where, f"{len(raw)} bytes: too short for an SPDM GET_MEASUREMENTS request and response")
    request, response = raw[:REQUEST_LEN], raw[REQUEST_LEN:]
    version, code, param1, param2 = request[:4]
    if code != GET_MEASUREMENTS:
        raise BadInput(where, f"request.code: 0x{code:02x}, expected 0xe0 (GET_MEASUREMENTS)")
    if not param1 & 1:
        raise BadInput(where, "request.param1: no signature was requested (bit 0 clear)")
    r = _Reader(response, where, "response")
    rversion, rcode, _p1, _p2 = r.take(4, "header")
    if rcode != MEASUREMENTS:
        raise BadInput(where, f"response.code: 0x{rcode:02x}, expected 0x60 (MEASUREMENTS)")
    if rversion != version:
        raise BadInput(where, f"response.version: 0x{rversion:02x}, the request's is 0x{version:02x}")
    count = r.take(1, "number_of_blocks")[0]
    record = _Reader(r.take(_le(r.take(3, "record_length")), "measurement_record"), where, "measurement_record")
    blocks: dict[int, Block] = {}
    for n in range(count):
        index, spec = record.take(2, f"block[{n}]")
        body = _Reader(record.take(_le(record.take(2, f"block[{n}].size")), f"block[{n}].measurement"),
                       where, f"measurement_record.block[{index}]")
        if spec != DMTF_SPEC:
            raise BadInput(where, f"measurement_record.block[{index}]: specification 0x{spec:02x}, expected DMTF (1)")
        value_type = body.take(1, "value_type")[0]
        value = body.take(_le(body.take(2, "value_size")), "value")
        if body.left:
            raise BadInput(where, f"measurement_record.block[{index}]: {body.left} bytes after the value")
        if index in blocks or index == 0:
            raise BadInput(where, f"measurement_record.block[{index}]: index repeated or 0")
        blocks[index] = Block(index, value_type, value)
    if record.left:
        raise BadInput(where, f"measurement_record: {record.left} bytes after {count} blocks")
    if not blocks:
        raise BadInput(where, "measurement_record: no measurement blocks")
    responder_nonce = r.take(NONCE_LEN, "nonce")
    opaque_raw = _Reader(r.take(_le(r.take(2, "opaque_length")), "opaque_data"), where, "opaque_data")
    opaque: dict[int, bytes] = {}
    while opaque_raw.left:
        kind = _le(opaque_raw.take(2, "type"))
        value = opaque_raw.take(_le(opaque_raw.take(2, f"field[{kind}].size")), f"field[{kind}]")
        if kind in opaque:
            raise BadInput(where, f"opaque_data: field {OPAQUE.get(kind, kind)} appears twice")
        opaque[kind] = value
    signature = r.take(SIGNATURE_LEN, "signature")
    if r.left:
        raise BadInput(where, f"response: {r.left} bytes after the signature")
    return Report(raw, request, response, version, request[4:4 + NONCE_LEN], param1, param2, blocks,
                  responder_nonce, opaque, signature)


def read_report_file(data: bytes, where: str) -> bytes:
    """A report file as NVIDIA's samples hold it (hex text, whitespace allowed) or as raw bytes."""
    text = data.strip()
    try:
        decoded = text.decode("ascii")
        if decoded and all(c in "0123456789abcdefABCDEF \t\r\n" for c in decoded):
            return bytes.fromhex("".join(decoded.split()))
    except (UnicodeDecodeError, ValueError):
        pass
    if len(data) > 1 and data[1] == GET_MEASUREMENTS:
        return data
    raise BadInput(where, "neither hex text nor a binary SPDM GET_MEASUREMENTS report")
