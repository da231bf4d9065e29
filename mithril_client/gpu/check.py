"""One GPU's evidence (attestation report + certificate chain) checked against a nonce and
NVIDIA's RIMs: the table rows `gpu cert chain`, `gpu signature`, `gpu nonce`, `gpu driver`,
`gpu vbios`, `gpu mode`, `gpu revocation` (docs/gpu.md, "GPU attestation").

Golden values (NVIDIA's semantics, nv-local-gpu-verifier 2.7.3): a RIM's Resource `index` i is
the report's SPDM block i + 1; every *active* golden value of the driver RIM and of the VBIOS
RIM must equal that block's value (one of its alternatives, same size); an index active in both
RIMs is refused; index 35 is skipped when the report says NVDEC0 is disabled (it measures NVDEC0).
Blocks no active golden value covers are not compared (NVIDIA's RIMs mark them inactive).
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from datetime import datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from ..certs import chain_to_anchor, data_cert, now_arg, pem_bundle
from ..errors import BadInput
from ..measurements import Row
from . import spdm
from .rim import Rim, parse_rim

DEVICE_ROOT = ("nvidia-device-identity-ca.pem", "102bf659d5419614c9d8e6aecebc80454eb26b1df6a769ac720b9a690b167b48")
# TCG DICE extension; in NVIDIA's leaf: SEQUENCE { version, deviceID SPKI, fwid SEQUENCE { hashAlg, digest } }
FWID_OID = "2.23.133.5.4.1"
SHA384_OID = bytes.fromhex("608648016503040202")  # 2.16.840.1.101.3.4.2.2
NVDEC_INDEX = 35
# NVIDIA: the CC mode (on / devtools) is part of this hashed measurement (RIM index 9, SPDM block
# 10), fixed by the VBIOS RIM's golden value (NVIDIA/nvtrust issue #132, its troubleshooting
# guide: a mismatch there "could be a result of using devtools mode"). A Hopper report states the
# mode nowhere in clear.
CC_MODE_INDEX = 9


def device_root() -> x509.Certificate:
    return data_cert(*DEVICE_ROOT)


@dataclass(frozen=True)
class RimSet:
    """The RIMs a verifier may use, and the time at which each one's certificates are judged.
    `pinned`: sha256 of RIM files whose certificates are judged at `pinned_at` instead of `now`
    (the driver RIM a release names in measurements.json; docs/gpu.md, "RIMs that expire")."""

    rims: tuple[Rim, ...] = ()
    pinned: frozenset[str] = frozenset()
    pinned_at: datetime | None = None
    roots: tuple = ()  # RIM roots instead of NVIDIA's pinned one (tests with RIMs signed here)

    def at(self, rim: Rim, now: datetime) -> datetime:
        return self.pinned_at if rim.sha256 in self.pinned and self.pinned_at else now


def _der(data: bytes, pos: int) -> tuple[int, int, int]:
    """(tag, start of content, end of content) of the DER element at `pos`."""
    if pos + 2 > len(data):
        raise ValueError("truncated")
    tag, length = data[pos], data[pos + 1]
    pos += 2
    if length & 0x80:
        n = length & 0x7F
        if not 0 < n <= 3 or pos + n > len(data):
            raise ValueError("bad length")
        length, pos = int.from_bytes(data[pos:pos + n], "big"), pos + n
    if pos + length > len(data):
        raise ValueError("truncated")
    return tag, pos, pos + length


def leaf_fwid(cert: x509.Certificate) -> bytes | None:
    """The SHA-384 FWID in the leaf's TCG DICE extension, or None."""
    try:
        ext = cert.extensions.get_extension_for_oid(x509.ObjectIdentifier(FWID_OID)).value.value
    except x509.ExtensionNotFound:
        return None
    try:
        tag, start, end = _der(ext, 0)
        if tag != 0x30:
            return None
        pos, fwid = start, None
        while pos < end:  # the last SEQUENCE { OID sha384, OCTET STRING } is the FWID
            tag, s, e = _der(ext, pos)
            if tag == 0x30:
                t1, s1, e1 = _der(ext, s)
                if t1 == 0x06 and ext[s1:e1] == SHA384_OID:
                    t2, s2, e2 = _der(ext, e1)
                    if t2 == 0x04 and e2 - s2 == 48:
                        fwid = ext[s2:e2]
            pos = e
        return fwid
    except ValueError:
        return None


def _short(data: bytes) -> str:
    return data.hex()[:16] + "…" if len(data) > 8 else data.hex()


def chain_row(report: spdm.Report, chain: list[x509.Certificate], now: datetime, roots: tuple = ()) -> Row:
    ok, path = chain_to_anchor(chain[0], chain[1:], list(roots) or [device_root()], now)
    fwid = report.field("fwid")
    cert_fwid = leaf_fwid(chain[0])
    if ok and fwid is None:
        ok, path = False, "the report carries no FWID"
    elif ok and cert_fwid != fwid:
        ok, path = False, f"leaf FWID {cert_fwid.hex() if cert_fwid else 'absent'} is not the report's {fwid.hex()}"
    return Row("gpu cert chain", "to NVIDIA Device Identity CA, valid, leaf FWID = report's", path if not ok else
               f"{path}; FWID {_short(fwid)}", "enforce", "ok" if ok else "MISMATCH")


def signature_row(report: spdm.Report, leaf: x509.Certificate) -> Row:
    key = leaf.public_key()
    ok = False
    if isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name == "secp384r1":
        sig = report.signature
        der = encode_dss_signature(int.from_bytes(sig[:48], "big"), int.from_bytes(sig[48:], "big"))
        try:
            key.verify(der, report.signed_data, ec.ECDSA(hashes.SHA384()))
            ok = True
        except InvalidSignature:
            pass
    return Row("gpu signature", "ECDSA P-384 over request ‖ response by the leaf key", "valid" if ok else "invalid",
               "enforce", "ok" if ok else "MISMATCH")


def nonce_row(report: spdm.Report, nonce: bytes) -> Row:
    ok = hmac.compare_digest(report.request_nonce, nonce)
    return Row("gpu nonce", nonce.hex(), report.request_nonce.hex(), "enforce", "ok" if ok else "MISMATCH")


def match_golden(report: spdm.Report, rim: Rim, skip: frozenset[int] = frozenset()) -> tuple[list[int], list[int]]:
    """(matching, mismatching) active RIM indices of `rim` against the report's blocks."""
    matching, mismatching = [], []
    for index, golden in sorted(rim.golden.items()):
        if not golden.active or index in skip:
            continue
        block = report.blocks.get(index + 1)
        ok = block is not None and len(block.value) == golden.size and block.value in golden.values
        (matching if ok else mismatching).append(index)
    return matching, mismatching


def _skip(report: spdm.Report) -> frozenset[int]:
    nvdec = report.field("nvdec0_status")
    return frozenset({NVDEC_INDEX}) if nvdec == bytes([spdm.DISABLED]) else frozenset()


def _active(rim: Rim) -> set[int]:
    return {i for i, g in rim.golden.items() if g.active}


def _rim_row(check: str, kind: str, report: spdm.Report, version: str | None, candidates: list[Rim],
             other: Rim | None, rims: RimSet, now: datetime, expected_version: str | None) -> tuple[Row, Rim | None]:
    """The row for one component (driver or VBIOS): some candidate RIM of `version` must verify
    (signature, chain at its time) and its every active golden value match."""
    if version is None:
        return Row(check, f"{kind} version in the report", "absent", "enforce", "MISMATCH"), None
    if expected_version is not None and version != expected_version:
        return Row(check, f"{kind} {expected_version} (the image's)", f"report: {version}", "enforce", "MISMATCH"), None
    if not candidates:
        return Row(check, f"a {kind} RIM for {version}", "none given", "enforce", "MISMATCH"), None
    problems = []
    for rim in candidates:
        if problem := rim.problem(rims.at(rim, now), rims.roots):
            problems.append(problem)
            continue
        if other is not None and (both := sorted(_active(rim) & _active(other))):
            problems.append(f"indices {both} active in both the driver and the VBIOS RIM")
            continue
        matching, mismatching = match_golden(report, rim, _skip(report))
        if mismatching:
            problems.append(f"golden values differ at RIM indices {mismatching} ({len(matching)} match)")
            continue
        return Row(check, f"{kind} {version}: every active golden value of its RIM",
                   f"{len(matching)} of {len(matching)} match; RIM sha256 {rim.sha256[:16]}…", "enforce", "ok"), rim
    return Row(check, f"{kind} {version}: every active golden value of its RIM", "; ".join(problems), "enforce",
               "MISMATCH"), None


def mode_row(report: spdm.Report, vbios_ok: Rim | None) -> Row:
    ppcie = report.field("protected_pcie_status")
    flag = report.field("feature_flag")
    flag_name = spdm.FEATURE_FLAGS.get(int.from_bytes(flag, "little"), "unknown") if flag else None
    problems = []
    if ppcie == bytes([spdm.ENABLED]):
        problems.append("protected-PCIe mode (a multi-GPU mode this verifier does not check)")
    if flag_name not in (None, "SPT", "MPT"):
        problems.append(f"feature flag {flag_name}")
    if vbios_ok is None or CC_MODE_INDEX not in _active(vbios_ok):
        problems.append(f"the CC-mode measurement (RIM index {CC_MODE_INDEX}) is not vouched for by a verified "
                        "VBIOS RIM")
    actual = "; ".join(problems) or (f"CC on, devtools off (measurement {CC_MODE_INDEX} = golden), "
                                     "protected PCIe off" + (f", {flag_name}" if flag_name else ""))
    return Row("gpu mode", "confidential computing on, devtools off", actual, "enforce",
               "MISMATCH" if problems else "ok")


def parse_chain(pem: bytes, where: str) -> list[x509.Certificate]:
    chain = pem_bundle(pem, where)
    if not chain:
        raise BadInput(where, "no certificates")
    return chain


def check_gpu(report_raw: bytes, chain_pem: bytes, nonce: bytes, rims: RimSet, *, now: datetime | None = None,
              driver_version: str | None = None, driver_sha256: str | None = None, label: str = "",
              where: str = "gpu", online=None, device_roots: tuple = ()) -> list[Row]:
    """Every row for one GPU. `driver_version`: the driver the image installs and `driver_sha256`
    its RIM's file digest (measurements.json); None accepts the report's own driver and any driver
    RIM for it. `online` (online.Online): fetch RIMs missing from `rims` from the RIM service and
    check revocation by OCSP; without it the `gpu revocation` row says it was not checked.
    `label` prefixes each row (e.g. "gpu 0: ") when there are several. `device_roots` replaces
    NVIDIA's pinned device root (tests with a chain made here)."""
    now = now_arg(now)
    report = spdm.parse_report(report_raw, f"{where}: report")
    chain = parse_chain(chain_pem, f"{where}: cert_chain")
    rows = [chain_row(report, chain, now, device_roots), signature_row(report, chain[0]), nonce_row(report, nonce)]
    driver_candidates = [r for r in rims.rims if r.version.lower() == (report.driver_version or "").lower()
                         and driver_sha256 in (None, r.sha256)]
    vbios_candidates = [r for r in rims.rims if r.version.lower() == (report.vbios_version or "").lower()]
    fetched = []
    if online is not None:
        from . import online as net

        wanted = []
        if not driver_candidates and report.driver_version:
            wanted.append(("driver", f"NV_GPU_DRIVER_GH100_{report.driver_version}"))
        if not vbios_candidates and (vbios_id := net.vbios_rim_id(report)):
            wanted.append(("vbios", vbios_id))
        for kind, rim_id in wanted:
            try:
                rim = parse_rim(net.fetch_rim(rim_id, online), f"{online.rim_service}{rim_id}")
            except (net.Unreachable, BadInput) as e:
                fetched.append(f"{rim_id}: {e}")
                continue
            version = report.driver_version if kind == "driver" else report.vbios_version
            unpinned = kind == "driver" and driver_sha256 not in (None, rim.sha256)
            if rim.version.lower() != (version or "").lower() or unpinned:
                fetched.append(f"{rim_id}: the service's RIM is for {rim.version} (sha256 {rim.sha256[:16]}…), "
                               "not this GPU's")
            else:
                (driver_candidates if kind == "driver" else vbios_candidates).append(rim)
    driver_row, driver_rim = _rim_row("gpu driver", "driver", report, report.driver_version, driver_candidates, None,
                                      rims, now, driver_version)
    vbios_row, vbios_rim = _rim_row("gpu vbios", "VBIOS", report, report.vbios_version, vbios_candidates, driver_rim,
                                    rims, now, None)
    rows += [driver_row, vbios_row, mode_row(report, vbios_rim), revocation_row(chain, (driver_rim, vbios_rim), online,
                                                                                now, fetched)]
    if label:
        rows = [Row(label + r.check, r.expected, r.actual, r.policy, r.result) for r in rows]
    return rows


def revocation_row(chain: list[x509.Certificate], rims: tuple, online, now: datetime, fetch_notes: list[str]) -> Row:
    expected = "OCSP: the GPU's chain and the RIMs' signing chains not revoked"
    if online is None:
        return Row("gpu revocation", expected, "not checked (offline)", "info", "skipped")
    from . import online as net
    from .rim import rim_root

    results = [net.check_revocation(chain, online, now, start=1)]
    for rim in rims:
        if rim is not None:
            path = [c for c in rim.certs if c != rim_root()] + [rim_root()]
            results.append(net.check_revocation(path, online, now))
    ok = all(r[0] for r in results)
    actual = "; ".join([r[1] for r in results] + fetch_notes)
    return Row("gpu revocation", expected, actual, "enforce", "ok" if ok else "MISMATCH")


def load_rims(files: dict[str, bytes]) -> list[Rim]:
    """Every RIM of a folder's files (name -> bytes); a file that is not a RIM is a BadInput."""
    from .rim import parse_rim

    return [parse_rim(data, name) for name, data in sorted(files.items())]
