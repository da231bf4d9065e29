"""mithril-build command line: click commands only — parse, call, print. No build logic here.

One module per group of commands (`base` holds what they share); `main` is the console script
and turns errors into exit codes.

Exit codes: 0 ok, 1 verification failed, 2 bad input or usage, 3 external tool failed,
70 internal error (a bug: one line on stderr, the redacted traceback in a file).
"""

from __future__ import annotations

import errno
import os
import sys

import click

from .. import invocation
from ..errors import MithrilError
from . import attest, audit, azure, boot, build, disks, provenance  # noqa: F401 -- they register the commands
from .base import cli

INTERNAL_ERROR = 70  # sysexits EX_SOFTWARE: never 0-3, so a crash never reads as a verdict
# OSErrors about a path the user named or controls (a missing folder, a file where a folder must
# be, no permission): bad input, exit 2. Any other exception is a bug: exit INTERNAL_ERROR.
_PATH_ERRNOS = {errno.ENOENT, errno.EACCES, errno.EPERM, errno.ENOTDIR, errno.EISDIR, errno.EEXIST,
                errno.EROFS, errno.ENAMETOOLONG, errno.ELOOP, errno.EXDEV}


def one_line(text: str) -> str:
    """Control characters (newlines, escape sequences) escaped: an error stays one line."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


def _fail(message: str, code: int) -> None:
    from ..run import redact

    click.echo(f"mithril-build: error: {one_line(redact(message))}", err=True)
    sys.exit(code)


def main(argv: list[str] | None = None) -> None:
    """The console script. `argv` (default sys.argv[1:]) lets tests run it in-process."""
    # Outputs must not depend on the caller's umask: files and folders we and our tools create
    # get the usual 0644/0755 (an auditor with umask 077 rebuilds the same bytes).
    os.umask(0o022)
    invocation.begin()  # this command's own state, nothing of an earlier one's
    from ..run import add_env_secrets

    add_env_secrets()
    try:
        cli.main(args=argv, prog_name="mithril-build", standalone_mode=False)
    except (click.exceptions.Abort, KeyboardInterrupt):
        click.echo("mithril-build: interrupted", err=True)
        sys.exit(130)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except click.exceptions.NoArgsIsHelpError as e:  # a bare `mithril-build`: the help, as asked
        click.echo(e.ctx.get_help() if e.ctx else e.format_message(), err=True)
        sys.exit(2)
    except click.UsageError as e:
        where = e.ctx.command_path if e.ctx else "mithril-build"
        _fail(f"{e.format_message()} (see `{where} --help`)", 2)
    except click.ClickException as e:
        _fail(e.format_message(), 2)
    except MithrilError as e:
        from ..run import redact

        if e.exit_code == 2:
            _fail(str(e), 2)
        click.echo(f"mithril-build: error: {redact(str(e))}", err=True)
        sys.exit(e.exit_code)
    except OSError as e:
        if e.errno in _PATH_ERRNOS:
            where = f"{e.filename}: " if e.filename is not None else ""
            _fail(f"{where}{e.strerror or e}", 2)
        _internal(e)
    except Exception as e:  # noqa: BLE001 -- the last resort: a bug must not look like a verdict
        _internal(e)


def _internal(e: Exception) -> None:
    from ..crash import write_report
    from ..run import redact

    where = write_report(e, sys.argv[1:], invocation.current().crash_dir)
    first = (str(e).splitlines() or [""])[0][:200]
    click.echo(one_line(redact(f"mithril-build: internal error: {type(e).__name__}: {first}, details in {where}")),
               err=True)
    sys.exit(INTERNAL_ERROR)
