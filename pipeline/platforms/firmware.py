"""A platform's firmware facts, measurements/platforms/<name>.yaml (project data; the platform's
code is its folder here): the firmware's events in PCR 4 before the UKI, and the firmware PCRs
0-3 (policy and known-good values, each with where and when it was recorded). Everything is
data, so `record-platform` can rewrite a file with `add_values` + `dump` without losing anything
(no meaning lives in YAML comments).
"""

from __future__ import annotations

import datetime
import re
from pathlib import Path
from typing import Literal

import yaml
from pydantic import Field, model_validator

from ..errors import BadInput
from ..measure.pcr import sha256
from ..measure.pcr04 import FirmwareEvent
from ..readers import Strict, load_model

PLATFORMS_DIR = Path("measurements") / "platforms"
HEX64 = r"^[0-9a-f]{64}$"
FIRMWARE_PCRS = (0, 1, 2, 3)


class KnownValue(Strict):
    value: str = Field(pattern=HEX64)
    source: str = Field(min_length=1, description="how and on what the value was recorded")
    date: datetime.date


class KnownIdKey(Strict):
    """The sha384 ID key digest an SEV-SNP report of this platform carried (azure-cvm: the key
    Azure signs its paravisor with; the client's allow-list is azure_cvm.AZURE_ID_KEY_DIGESTS)."""

    value: str = Field(pattern=r"^[0-9a-f]{96}$")
    source: str = Field(min_length=1)
    date: datetime.date


class FirmwarePcr(Strict):
    policy: Literal["enforce", "warn"]
    values: tuple[KnownValue, ...] = ()
    note: str = ""

    @model_validator(mode="after")
    def _enforce_needs_values(self):
        if self.policy == "enforce" and not self.values:
            raise ValueError("policy 'enforce' needs at least one known-good value")
        return self


class EventSpec(Strict):
    """One firmware event: its data as text (hashed as UTF-8, no NUL) or hex; or a digest."""

    type: str = Field(pattern=r"^EV_[A-Z0-9_]+$")
    text: str | None = None
    hex: str | None = Field(None, pattern=r"^([0-9a-f]{2})*$")
    digest: str | None = Field(None, pattern=HEX64)
    description: str = ""

    @model_validator(mode="after")
    def _one_source(self):
        if sum(x is not None for x in (self.text, self.hex, self.digest)) != 1:
            raise ValueError("give exactly one of text, hex, digest")
        return self

    def event(self) -> FirmwareEvent:
        if self.digest is not None:
            return FirmwareEvent(self.type, self.description or self.type, bytes.fromhex(self.digest))
        data = self.text.encode() if self.text is not None else bytes.fromhex(self.hex)
        what = self.description or (repr(self.text) if self.text is not None else f"data {self.hex}")
        return FirmwareEvent(self.type, what, sha256(data))


class Firmware(Strict):
    name: str = Field(pattern=r"^[a-z0-9][-a-z0-9]*$")
    description: str
    source: str = Field(description="where the event sequence was established")
    date: datetime.date
    pcr4_firmware_events: tuple[EventSpec, ...] = Field(min_length=1)
    firmware_pcrs: dict[int, FirmwarePcr]
    zero_pcrs: tuple[int, ...] = Field((), description="PCRs nothing extends on this platform's boot path "
                                       "(no boot loader between firmware and UKI): enforced as zero")
    snp_id_key_digests: tuple[KnownIdKey, ...] = Field((), description="ID key digests seen in this platform's "
                                                       "SEV-SNP reports (`record-platform --from-evidence`)")

    @model_validator(mode="after")
    def _all_firmware_pcrs(self):
        if sorted(self.firmware_pcrs) != list(FIRMWARE_PCRS):
            raise ValueError("firmware_pcrs must list exactly PCRs 0, 1, 2, 3")
        if any(p not in (8, 10) for p in self.zero_pcrs):
            raise ValueError("zero_pcrs may only name PCRs 8 and 10 (the others are predicted or firmware's)")
        return self

    def firmware_events(self) -> list[FirmwareEvent]:
        return [e.event() for e in self.pcr4_firmware_events]


def path_for(root: Path, name: str) -> Path:
    if not re.fullmatch(r"[a-z0-9][a-z0-9-]*", name):
        raise BadInput("--platform", f"{name!r} is not a platform name", "lower-case letters, digits and '-'")
    return root / PLATFORMS_DIR / f"{name}.yaml"


def known(root: Path) -> list[str]:
    return sorted(p.stem for p in (root / PLATFORMS_DIR).glob("*.yaml"))


def load(root: Path, name: str) -> Firmware:
    """The platform file for `name` under root/measurements/platforms; BadInput naming the file
    and field when it is missing or wrong."""
    path = path_for(root, name)
    where = str(path)
    if not path.is_file():
        raise BadInput(where, f"unknown platform {name!r}",
                       "known platforms: " + (", ".join(known(root)) or "none (measurements/platforms/ is empty)"))
    plat = load_model(path, Firmware, where)
    if plat.name != name:
        raise BadInput(where, f"name: {plat.name!r} does not match the file name {name!r}")
    return plat


def add_values(plat: Firmware, values: dict[int, str], source: str, date: datetime.date) -> Firmware:
    """A copy with newly recorded firmware PCR values appended (duplicates skipped)."""
    pcrs = dict(plat.firmware_pcrs)
    for pcr, value in sorted(values.items()):
        if pcr not in pcrs:
            raise BadInput("record", f"PCR {pcr} is not a firmware PCR (0-3)")
        entry = pcrs[pcr]
        if any(v.value == value.lower() for v in entry.values):
            continue
        new = KnownValue(value=value.lower(), source=source, date=date)
        pcrs[pcr] = entry.model_copy(update={"values": (*entry.values, new)})
    return plat.model_validate({**plat.model_dump(), "firmware_pcrs": {k: v.model_dump() for k, v in pcrs.items()}})


def add_id_key(plat: Firmware, digest: str, source: str, date: datetime.date) -> Firmware:
    """A copy with an observed SNP ID key digest appended (a known one is not repeated)."""
    if any(v.value == digest for v in plat.snp_id_key_digests):
        return plat
    new = KnownIdKey(value=digest, source=source, date=date)
    return plat.model_copy(update={"snp_id_key_digests": (*plat.snp_id_key_digests, new)})


def dump(plat: Firmware) -> str:
    """YAML text for a platform file (stable key order, dates as YYYY-MM-DD)."""
    data = plat.model_dump(mode="json", exclude_none=True)
    if not data["snp_id_key_digests"]:
        del data["snp_id_key_digests"]
    data["firmware_pcrs"] = {int(k): v for k, v in data["firmware_pcrs"].items()}
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=100)
