"""Client SDK for Mithril servers: verify a server's TPM evidence against the measurements.json
of the build you trust, then talk to it over a TLS channel that ends inside the measured image.

    from mithril_client import AttestedSession
    with AttestedSession("https://203.0.113.7", measurements="measurements.json") as s:
        print(s.get("/").text)
"""

from .errors import BadInput, MithrilError, VerificationFailed
from .session import AttestationFailed, AttestedSession, Response, Unreachable
from .verify import Report, Trust, verify_evidence

__all__ = ["AttestationFailed", "AttestedSession", "BadInput", "MithrilError", "Report", "Response", "Trust",
           "Unreachable", "VerificationFailed", "verify_evidence"]
