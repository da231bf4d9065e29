"""The attestation server that runs inside the guest image (docs/evidence.md)."""
