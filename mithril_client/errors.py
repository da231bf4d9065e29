"""The error types shared by the client SDK and mithril-build; the CLIs map them to exit codes."""


class MithrilError(Exception):
    """Base class. `exit_code` is what a command exits with."""

    exit_code = 1


class VerificationFailed(MithrilError):
    """A check ran and the result is wrong (digest, PCR, signature, certificate): exit 1."""

    exit_code = 1


class BadInput(MithrilError):
    """Bad config, lock, archive, disk, quote or evidence: exit 2.

    The message is one line: what is wrong, where (file and field), how to fix it.
    """

    exit_code = 2

    def __init__(self, where: str, what: str, fix: str = ""):
        self.where, self.what, self.fix = where, what, fix
        msg = f"{where}: {what}" if where else what
        if fix:
            msg += f" ({fix})"
        super().__init__(msg)
