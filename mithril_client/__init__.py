"""Client SDK for Mithril servers: verify a server's TPM evidence against the measurements.json
of the build you trust, then talk to it over a TLS channel that ends inside the measured image.

    from mithril_client import AttestedSession
    with AttestedSession("https://203.0.113.7", measurements="measurements.json") as s:
        print(s.get("/").text)
"""

from importlib import import_module

# Imported on first use: `mithril-build` imports mithril_client.errors on every run and should
# not pay for the TLS and X.509 machinery it rarely needs.
_EXPORTS = {
    "AttestationFailed": "verify", "AttestedSession": "session", "Response": "session", "Unreachable": "session",
    "BadInput": "errors", "MithrilError": "errors", "VerificationFailed": "errors",
    "Report": "verify", "Trust": "verify", "verify_evidence": "verify",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'mithril_client' has no attribute {name!r}")
    return getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
