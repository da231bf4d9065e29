"""A PCR simulator for the sha256 bank that keeps a human-readable event log."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from mithril_client.tpm2 import extend, sha256  # the one extend, shared with the server and the client

__all__ = ["ZERO", "Event", "Simulator", "extend", "replay", "sha256"]

ZERO = bytes(32)


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
