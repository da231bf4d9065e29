"""The error types library code raises; the cli (pipeline/cli/) maps them to exit codes. The client SDK
(mithril_client) raises the same types, so a verification shared by both reads the same."""

from mithril_client.errors import BadInput, MithrilError, VerificationFailed

__all__ = ["BadInput", "MithrilError", "ToolFailed", "VerificationFailed"]


class ToolFailed(MithrilError):
    """An external program failed or is missing: exit 3."""

    exit_code = 3
