"""Compare observed PCR values with measurements.json (v1); shared by the boot check and
`attest verify`.

measurements.json: {"version": 1, "platform", "mode": "production|debug",
"pcrs": {"4": {"expected": [hex, ...], "policy": "enforce"|"warn"}, ...},
"application_disk": {"roothash": hex}, ...}. `expected` is an allow-list: any listed value passes.
PCR 15 is listed as its value after the zero sentinel; with the attestation server's TLS root CA
the verifier replays one more extend (`tpm2.with_ca`).
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path

from .errors import BadInput
from .tpm2 import TLS_PCR, with_ca

HEX64 = re.compile(r"[0-9a-f]{64}")  # always with fullmatch
POLICIES = ("enforce", "warn")


@dataclass(frozen=True)
class Measurements:
    path: str
    platform: str
    mode: str
    pcrs: dict[int, tuple[tuple[str, ...], str]]  # index -> (expected values, policy)
    app_roothash: str | None
    gpu: GpuReference | None = None  # a GPU profile: its evidence must carry GPU evidence


@dataclass(frozen=True)
class GpuReference:
    """measurements.json `gpu`: the driver the image installs and the NVIDIA RIM that describes it
    (the release carries the file; docs/gpu.md). `rims_checked_at`: the time the build checked the
    pinned RIM's signature and certificates, at which they are judged later too."""

    driver_version: str
    driver_rim_id: str
    driver_rim_sha256: str
    rims_checked_at: object  # datetime


@dataclass(frozen=True)
class Row:
    check: str  # "PCR 4", "signature", "nonce", ...
    expected: str
    actual: str
    policy: str  # enforce | warn | info
    result: str  # ok | MISMATCH | warn | missing

    @property
    def failed(self) -> bool:
        return self.policy == "enforce" and self.result not in ("ok",)

    def as_json(self) -> dict:
        return asdict(self)


def parse_measurements(raw: object, where: str) -> Measurements:
    if not isinstance(raw, dict):
        raise BadInput(where, "must be a JSON object")
    if type(raw.get("version")) is not int or raw["version"] != 1:  # not True, not 1.0
        raise BadInput(where, f"version: expected 1, got {raw.get('version')!r}",
                       "rebuild with `mithril-build measurements`")
    mode = raw.get("mode")
    if mode not in ("production", "debug"):
        raise BadInput(where, f"mode: expected 'production' or 'debug', got {mode!r}")
    pcrs_raw = raw.get("pcrs")
    if not isinstance(pcrs_raw, dict) or not pcrs_raw:
        raise BadInput(where, "pcrs: expected a non-empty object of PCR index -> {expected, policy}")
    pcrs: dict[int, tuple[tuple[str, ...], str]] = {}
    for key, entry in pcrs_raw.items():
        field = f"pcrs.{key}"
        if not (isinstance(key, str) and key.isascii() and key.isdigit() and str(int(key)) == key and int(key) <= 23):
            raise BadInput(where, f"{field}: PCR index must be 0..23 in ASCII digits")
        if not isinstance(entry, dict):
            raise BadInput(where, f"{field}: expected an object with 'expected' and 'policy'")
        policy = entry.get("policy", "enforce")
        if policy not in POLICIES:
            raise BadInput(where, f"{field}.policy: expected one of {', '.join(POLICIES)}, got {policy!r}")
        expected = entry.get("expected")
        if isinstance(expected, str):
            expected = [expected]
        if not isinstance(expected, list) or not expected:
            raise BadInput(where, f"{field}.expected: expected a non-empty list of sha256 hex values")
        for i, value in enumerate(expected):
            if not isinstance(value, str) or not HEX64.fullmatch(value.lower()):
                raise BadInput(where, f"{field}.expected[{i}]: not 64 hex digits")
        pcrs[int(key)] = (tuple(v.lower() for v in expected), policy)
    app = raw.get("application_disk")
    roothash = app.get("roothash") if isinstance(app, dict) else None
    if roothash is not None and (not isinstance(roothash, str) or not HEX64.fullmatch(roothash.lower())):
        raise BadInput(where, "application_disk.roothash: not 64 hex digits")
    return Measurements(where, str(raw.get("platform", "")), mode, dict(sorted(pcrs.items())),
                        roothash.lower() if roothash else None, _gpu(raw.get("gpu"), where))


def _gpu(raw, where: str) -> GpuReference | None:
    if raw is None:
        return None
    import datetime as dt

    if not isinstance(raw, dict):
        raise BadInput(where, "gpu: expected an object {driver_version, driver_rim: {id, sha256, checked_at}}")
    rim = raw.get("driver_rim")
    version = raw.get("driver_version")
    if not isinstance(version, str) or not version or not isinstance(rim, dict):
        raise BadInput(where, "gpu: driver_version (string) and driver_rim (object) are required")
    rim_id, sha, checked = rim.get("id"), rim.get("sha256"), rim.get("checked_at")
    if not isinstance(rim_id, str) or not isinstance(sha, str) or not HEX64.match(sha):
        raise BadInput(where, "gpu.driver_rim: id (string) and sha256 (64 lower-case hex digits) are required")
    try:
        when = dt.datetime.fromisoformat(str(checked).replace("Z", "+00:00"))
    except ValueError:
        raise BadInput(where, f"gpu.driver_rim.checked_at: {checked!r} is not an ISO 8601 time") from None
    if when.tzinfo is None:
        raise BadInput(where, "gpu.driver_rim.checked_at: needs a time zone (Z)")
    return GpuReference(version, rim_id, sha, when)


def load_measurements(path: Path) -> Measurements:
    where = str(path)
    try:
        raw = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise BadInput(where, "not found", "run `mithril-build measurements` first") from None
    except (OSError, UnicodeDecodeError) as e:
        raise BadInput(where, f"cannot read: {e}") from None
    except json.JSONDecodeError as e:
        raise BadInput(where, f"not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})") from None
    except (ValueError, RecursionError):  # an integer of thousands of digits, deep nesting
        raise BadInput(where, "not usable JSON (a huge number or deep nesting)") from None
    return parse_measurements(raw, where)


def compare_pcrs(m: Measurements, actual: dict[int, str], ca_pem: bytes | None = None) -> list[Row]:
    """One row per PCR in the measurements; `actual` maps index -> lower-case hex (sha256 bank)."""
    rows = []
    for index, (expected, policy) in m.pcrs.items():
        if index == TLS_PCR and ca_pem is not None:
            expected = tuple(with_ca(bytes.fromhex(v), ca_pem).hex() for v in expected)
        got = actual.get(index)
        if got is None:
            result = "missing"
        elif got.lower() in expected:
            result = "ok"
        else:
            result = "MISMATCH" if policy == "enforce" else "warn"
        rows.append(Row(f"PCR {index}", " | ".join(expected), got or "-", policy, result))
    return rows


def format_table(rows: list[Row], width: int = 16) -> str:
    """A plain-text table; long hex values are shortened to `width` characters (0 = full)."""
    def short(v: str) -> str:
        parts = [p if not width or len(p) <= width else p[:width] + "…" for p in v.split(" | ")]
        return " | ".join(parts)

    cells = [("CHECK", "EXPECTED", "ACTUAL", "POLICY", "RESULT")]
    cells += [(r.check, short(r.expected), short(r.actual), r.policy, r.result) for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(5)]
    return "\n".join("  ".join(c[i].ljust(widths[i]) for i in range(5)).rstrip() for c in cells)
