"""The error types library code raises; cli.py maps them to exit codes."""


class MithrilError(Exception):
    """Base class. `exit_code` is what the command exits with."""

    exit_code = 1


class VerificationFailed(MithrilError):
    """A check ran and the result is wrong (digest, PCR, signature): exit 1."""

    exit_code = 1


class BadInput(MithrilError):
    """Bad config, lock, archive, disk or quote: exit 2.

    The message is one line: what is wrong, where (file and field), how to fix it.
    """

    exit_code = 2

    def __init__(self, where: str, what: str, fix: str = ""):
        self.where, self.what, self.fix = where, what, fix
        msg = f"{where}: {what}" if where else what
        if fix:
            msg += f" ({fix})"
        super().__init__(msg)


class ToolFailed(MithrilError):
    """An external program failed or is missing: exit 3."""

    exit_code = 3
