"""A PCR simulator for the sha256 bank that keeps a human-readable event log."""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field

ZERO = bytes(32)


def sha256(data) -> bytes:
    return hashlib.sha256(data).digest()


def extend(old: bytes, digest: bytes) -> bytes:
    """TPM2_PCR_Extend: new = sha256(old || digest)."""
    if len(digest) != 32:
        raise ValueError(f"a sha256 digest has 32 bytes, not {len(digest)}")
    return sha256(old + digest)


@dataclass(frozen=True)
class Event:
    pcr: int
    type: str  # TCG event type (EV_SEPARATOR, ...) or the extending program
    description: str
    digest: str  # hex of what was extended

    def as_json(self) -> dict:
        return asdict(self)


@dataclass
class Simulator:
    """PCRs start at zero (locality 0); every extend is logged in order."""

    values: dict[int, bytes] = field(default_factory=dict)
    events: list[Event] = field(default_factory=list)

    def extend(self, pcr: int, digest: bytes, type: str, description: str) -> None:
        self.values[pcr] = extend(self.value(pcr), digest)
        self.events.append(Event(pcr, type, description, digest.hex()))

    def measure(self, pcr: int, data: bytes, type: str, description: str) -> None:
        """Extend sha256(data)."""
        self.extend(pcr, sha256(data), type, description)

    def touch(self, pcr: int) -> None:
        """Declare a PCR that is predicted to stay zero (no event)."""
        self.values.setdefault(pcr, ZERO)

    def value(self, pcr: int) -> bytes:
        return self.values.get(pcr, ZERO)

    def log(self, pcr: int | None = None) -> list[Event]:
        return [e for e in self.events if pcr is None or e.pcr == pcr]


def replay(events: list[Event], pcr: int, start: bytes = ZERO) -> bytes:
    """The value a PCR ends at after the given events (e.g. read back from eventlog.json)."""
    value = start
    for e in events:
        if e.pcr == pcr:
            value = extend(value, bytes.fromhex(e.digest))
    return value
