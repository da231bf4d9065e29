"""Predict every PCR of a boot from the built artifacts alone: the OS disk image (its ESP's
UKI), the application disk's roothash and the platform file. Produces the measurements.json
(v1) and eventlog.json documents; `explain` renders one PCR's events for people.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import BadInput
from ..files import sha256_file
from . import pcr04, pcr09, pcr11, pcr12_13, pcr15
from .fat import open_esp
from .pcr import Event, Simulator, replay
from .pe import PeImage, kernel, stub_version
from ..platforms.firmware import Firmware

VERSION = 1


@dataclass(frozen=True)
class Prediction:
    measurements: dict
    eventlog: dict
    uki: bytes = field(repr=False)


def predict(os_disk: Path, roothash: str, platform: Firmware, mode: str, *, phases: tuple[str, ...] = (),
            platform_file: bytes = b"", digests: dict[str, str] | None = None,
            uki_copy: Path | None = None) -> Prediction:
    """measurements.json and eventlog.json for booting `os_disk` on `platform`.

    `digests` may carry already known sha256 of input files by name (e.g. from the OS stage's
    record); "os_disk.raw" is hashed here only when it is not given, "uki.efi" only when no
    `uki_copy` (the OS stage's separate uki.efi) was given: that copy must be byte-identical to
    the UKI on the ESP.
    """
    if mode not in ("production", "debug"):
        raise BadInput("profile", f"mode: expected production or debug, got {mode!r}")
    if not (isinstance(roothash, str) and re.fullmatch(r"[0-9a-fA-F]{64}", roothash)):
        raise BadInput("roothash", f"not 64 hex digits: {roothash!r}", "pass the app disk's dm-verity root hash")
    root = bytes.fromhex(roothash)
    with open_esp(os_disk) as esp:
        files = esp.walk()
        pcr12_13.check_esp(files, esp.where)
        uki_bytes = esp.read(pcr12_13.UKI_PATH)
    known = dict(digests or {})
    if uki_copy is not None:
        try:
            same = Path(uki_copy).read_bytes() == uki_bytes
        except OSError as e:
            raise BadInput(str(uki_copy), f"cannot read: {e.strerror}") from None
        if not same:
            raise BadInput(str(uki_copy), "differs from the UKI on the OS disk's ESP",
                           "os_disk.raw and uki.efi come from different builds")
    else:
        known.pop("uki.efi", None)
    uki = PeImage(uki_bytes, f"{os_disk}: {pcr12_13.UKI_PATH}")
    linux = kernel(uki)
    stub_major, stub_full = stub_version(uki)

    sim = Simulator()
    pcr04.predict(sim, platform.firmware_events(), uki, linux)
    why_not_9 = pcr09.unsupported(uki, stub_major)
    if why_not_9 is None:
        pcr09.predict(sim, uki)
    pcr11.predict(sim, uki, stub_major, phases)
    pcr12_13.predict(sim, files, str(os_disk))
    pcr15.predict(sim, root)
    for index in platform.zero_pcrs:  # e.g. PCR 8: no GRUB or shim measures commands into it
        sim.touch(index)

    pcrs: dict[str, dict] = {}
    notes: dict[str, str] = {"9": why_not_9} if why_not_9 else {}
    for index, fw in sorted(platform.firmware_pcrs.items()):
        if fw.values:
            pcrs[str(index)] = {"expected": sorted({v.value for v in fw.values}), "policy": fw.policy}
        else:
            notes[str(index)] = (f"firmware PCR {index}: no known-good value recorded for platform "
                                 f"{platform.name!r} yet ({fw.note or 'see its platform file'})")
    for index in sorted(sim.values):
        pcrs[str(index)] = {"expected": [sim.value(index).hex()], "policy": "enforce"}

    inputs = {
        "os_disk.raw": known.get("os_disk.raw") or sha256_file(os_disk),
        "uki.efi": known.get("uki.efi") or hashlib.sha256(uki_bytes).hexdigest(),
        f"measurements/platforms/{platform.name}.yaml": hashlib.sha256(platform_file).hexdigest(),
    }
    inputs.update({k: v for k, v in known.items() if k not in inputs})
    events = [e.as_json() for e in sim.events]
    eventlog = {"version": VERSION, "platform": platform.name, "mode": mode, "events": events}
    measurements = {
        "version": VERSION,
        "platform": platform.name,
        "mode": mode,
        "pcrs": dict(sorted(pcrs.items(), key=lambda kv: int(kv[0]))),
        "not_predicted": dict(sorted(notes.items(), key=lambda kv: int(kv[0]))),
        "application_disk": {"roothash": root.hex()},
        "uki": {
            "authenticode": uki.authenticode().hex(),
            "kernel_authenticode": linux.authenticode().hex(),
            "stub": f"systemd-stub {stub_full}",
            "uname": bytes(uki.section_data(".uname") or b"").rstrip(b"\0\n").decode(errors="replace"),
            "pcr11_sections": pcr11.present(uki, stub_major),
            "pcr11_phases": list(phases),
        },
        "inputs": dict(sorted(inputs.items())),
        "outputs": {"eventlog.json": hashlib.sha256(dumps(eventlog)).hexdigest()},
    }
    return Prediction(measurements, eventlog, uki_bytes)


def dumps(doc: dict) -> bytes:
    """The one serialisation of measurements.json / eventlog.json: sorted keys, 2-space indent."""
    return json.dumps(doc, indent=2, sort_keys=True).encode() + b"\n"


def _load(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise BadInput(str(path), "not found", "run `mithril-build measurements` first") from None
    except (OSError, ValueError, RecursionError) as e:
        raise BadInput(str(path), f"cannot read: {str(e)[:200]}") from None


def pcr_events(pcr: int, folder: Path) -> list[dict]:
    """The predicted events of one PCR from eventlog.json in `folder`."""
    log = _load(folder / "eventlog.json")
    try:
        return [e for e in log["events"] if e["pcr"] == pcr]
    except (KeyError, TypeError) as e:
        raise BadInput(str(folder / "eventlog.json"), f"events: malformed ({e})") from None


def explain(pcr: int, folder: Path) -> str:
    """The predicted events of one PCR, with the running value, from measurements.json and
    eventlog.json in `folder` (out/<profile>)."""
    m = _load(folder / "measurements.json")
    try:
        events = [Event(**e) for e in pcr_events(pcr, folder)]
    except TypeError as e:
        raise BadInput(str(folder / "eventlog.json"), f"events: malformed ({e})") from None
    entry = m.get("pcrs", {}).get(str(pcr))
    lines = [f"PCR {pcr} — platform {m.get('platform')}, mode {m.get('mode')}"]
    if entry is None:
        lines.append("  not in measurements.json: " + m.get("not_predicted", {}).get(str(pcr), "not measured"))
        return "\n".join(lines)
    value = bytes(32)
    for i, e in enumerate(events, 1):
        value = replay([e], pcr, value)
        lines.append(f"  {i:2}. {e.type:<34} {e.digest}  {e.description}")
        lines.append(f"      {'':<34} -> {value.hex()}")
    if not events:
        lines.append("  (no events: the PCR stays at its reset value)" if pcr >= 4
                     else "  (firmware PCR: values come from the platform file)")
    lines.append(f"  expected ({entry['policy']}): " + ", ".join(entry["expected"]))
    if events and value.hex() not in entry["expected"]:
        lines.append("  WARNING: the event log does not replay to the expected value")
    if pcr == 15:
        lines.append("  verifiers then replay the attestation server's extend of sha256(its TLS root CA PEM)")
    return "\n".join(lines)
