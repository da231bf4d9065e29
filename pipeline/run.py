"""The one place external programs are run (through `sh`).

Every call logs its command line (redacted) when verbose, captures stderr, and turns a
failure into ToolFailed (exit 3) with the tail of the program's stderr. Secrets
registered with `add_secret` and SAS signatures / HF tokens never reach a message.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import tempfile
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from . import invocation, log
from .errors import ToolFailed

_secrets: set[str] = set()
_PATTERNS = [
    # Azure SAS query parameters (the signature and what it is bound to), also URL-encoded ("%26sig%3D")
    (re.compile(r"((?:[?&;]|%3[Ff]|%26)(?:sig|se|st|skoid|sktid|sks|skv|skt|ske)(?:=|%3[Dd]))[^&\s\"'<>]+"),
     r"\1REDACTED"),
    # connection strings and key=value secrets
    (re.compile(r"(?i)\b((?:AccountKey|SharedAccessKey|SharedAccessSignature|client_secret|password|passwd|"
                r"api[_-]?key|access[_-]?token|token)=)[^;&\s\"'<>]+"), r"\1REDACTED"),
    (re.compile(r"(?i)\b(Bearer|Basic)\s+[A-Za-z0-9._~+/=-]{8,}"), r"\1 REDACTED"),
    (re.compile(r"\bhf_[A-Za-z0-9]{8,}\b"), "hf_REDACTED"),
    (re.compile(r"\b(?:gh[pousr]_[A-Za-z0-9]{20,}|github_pat_[A-Za-z0-9_]{20,})\b"), "gh_REDACTED"),
    (re.compile(r"-----BEGIN ([A-Z0-9 ]*)PRIVATE KEY-----.*?(?:-----END \1PRIVATE KEY-----|\Z)", re.S),
     r"-----BEGIN \1PRIVATE KEY----- REDACTED -----END \1PRIVATE KEY-----"),
]
# Environment variables whose values are secrets wherever they appear (see add_secret).
SECRET_ENV = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "AZURE_CLIENT_SECRET", "AZURE_STORAGE_KEY",
              "AZURE_STORAGE_SAS_TOKEN", "AZURE_STORAGE_CONNECTION_STRING", "MITHRIL_SIGNING_KEY_PASSWORD")
# mkosi needs Debian's Python (with pefile) first on PATH: the first python3 on a developer's PATH
# may be another one (pyenv), and ukify then fails with "No module named 'pefile'".
SYSTEM_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"


def add_secret(value: str | None) -> None:
    if value and len(value) >= 4:
        _secrets.add(value)


def add_env_secrets() -> None:
    for name in SECRET_ENV:
        add_secret(os.environ.get(name))


def redact(text: str) -> str:
    for secret in sorted(_secrets, key=len, reverse=True):
        text = text.replace(secret, "***")
    for pattern, repl in _PATTERNS:
        text = pattern.sub(repl, text)
    return text


@dataclass(frozen=True)
class Completed:
    argv: tuple[str, ...]
    returncode: int
    stdout: bytes
    stderr: bytes

    @property
    def text(self) -> str:
        return self.stdout.decode(errors="replace")


def cmdline(argv: Sequence[str | os.PathLike]) -> str:
    return redact(shlex.join(str(a) for a in argv))


# What a tool sees of the caller's locale and time zone never reaches an output: every tool runs
# in the C.UTF-8 locale and UTC (and, see cli.main, with umask 022).
FIXED_ENV = {"LC_ALL": "C.UTF-8", "TZ": "UTC"}


def _env(env: Mapping[str, str] | None, extra_env: Mapping[str, str] | None) -> dict[str, str]:
    base = {k: v for k, v in (os.environ if env is None else env).items() if k not in ("LANGUAGE", "LANG")}
    base.update(FIXED_ENV)
    base.update(extra_env or {})
    return base


def which(program: str, path: str | None = None) -> str | None:
    import shutil

    return shutil.which(program, path=path or os.environ.get("PATH", "") + ":" + SYSTEM_PATH)


def _program(args: list[str], mark: str, path: str | None = None) -> str:
    """The executable of args[0] (found on `path`), the command line logged with -v."""
    exe = which(args[0], path)
    if exe is None:
        raise ToolFailed(f"{args[0]}: program not found (run scripts/setup.sh to install the tools)")
    if invocation.current().verbose:
        log.info("$ " + cmdline(args) + mark)
    return exe


def run(
    argv: Sequence[str | os.PathLike],
    *,
    cwd: str | os.PathLike | None = None,
    env: Mapping[str, str] | None = None,
    extra_env: Mapping[str, str] | None = None,
    input: bytes | None = None,
    stdout: IO | None = None,
    timeout: float | None = None,
    ok: Sequence[int] = (0,),
) -> Completed:
    """Run argv[0] with arguments; return its output or raise ToolFailed."""
    args = [str(a) for a in argv]
    environ = _env(env, extra_env)
    exe = _program(args, "", environ.get("PATH"))
    kwargs = {"_cwd": str(cwd) if cwd else None, "_env": environ, "_ok_code": list(ok),
              "_timeout": timeout, "_return_cmd": True, "_tty_out": False}
    if input is not None:
        kwargs["_in"] = input
    if stdout is not None:
        kwargs["_out"] = stdout
    import sh  # here, not at the top: the warm no-op loads this module (secrets) but runs nothing

    try:
        proc = sh.Command(exe)(*args[1:], **kwargs)
    except sh.ErrorReturnCode as e:
        tail = redact(e.stderr.decode(errors="replace").strip() or e.stdout.decode(errors="replace").strip())
        tail = "\n".join(tail.splitlines()[-15:])
        raise ToolFailed(f"{cmdline(args)} exited with status {e.exit_code}\n{tail}") from None
    except sh.TimeoutException:
        raise ToolFailed(f"{cmdline(args)} did not finish within {timeout} s") from None
    out = proc.stdout if stdout is None else b""
    return Completed(tuple(args), proc.exit_code, out or b"", proc.stderr or b"")


@contextmanager
def pipe(argv: Sequence[str | os.PathLike], source: IO[bytes], chunk: int = 1 << 20) -> Iterator[IO[bytes]]:
    """Run argv with `source` copied to its stdin (by a thread) and give its stdout to read as it
    comes: memory stays at a few chunks whatever the size (`sh` would collect the whole output).
    Read the output to its end: the program's failure then raises ToolFailed."""
    args = [str(a) for a in argv]
    exe = _program(args, " |")
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen([exe, *args[1:]], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err,
                                env=_env(None, None))

        def feed() -> None:
            try:
                while data := source.read(chunk):
                    proc.stdin.write(data)
            except (BrokenPipeError, ValueError):  # the program exited or was stopped first
                pass
            finally:
                try:
                    proc.stdin.close()
                except BrokenPipeError:
                    pass

        feeder = threading.Thread(target=feed, daemon=True)
        feeder.start()
        try:
            yield proc.stdout
        except BaseException:
            proc.kill()
            raise
        finally:
            proc.stdout.close()
            feeder.join()
            proc.wait()
        if proc.returncode:
            err.seek(0)
            tail = "\n".join(redact(err.read(1 << 16).decode(errors="replace").strip()).splitlines()[-15:])
            raise ToolFailed(f"{cmdline(args)} exited with status {proc.returncode}\n{tail}")


class Background:
    """A long-running program (swtpm, QEMU) with its output in a file; always stop() it."""

    def __init__(self, argv: Sequence[str | os.PathLike], output: Path, *, cwd=None,
                 extra_env: Mapping[str, str] | None = None):
        args = [str(a) for a in argv]
        exe = _program(args, " &")
        self.argv = args
        self.output = output
        self._file = open(output, "wb")  # noqa: SIM115 -- lives until stop()
        import sh

        self._proc = sh.Command(exe)(
            *args[1:], _bg=True, _bg_exc=False, _out=self._file, _err_to_out=True,
            _cwd=str(cwd) if cwd else None, _env=_env(None, extra_env), _ok_code=list(range(256)),
            _new_session=True,
        )

    @property
    def pid(self) -> int:
        return self._proc.pid

    def alive(self) -> bool:
        return self._proc.is_alive()

    def returncode(self) -> int | None:
        return None if self.alive() else self._proc.exit_code

    def wait(self, timeout: float | None = None) -> int | None:
        import sh

        try:
            self._proc.wait(timeout=timeout)
        except sh.TimeoutException:
            return None
        except sh.ErrorReturnCode:  # killed by a signal
            pass
        return self._proc.exit_code

    def stop(self, grace: float = 5.0) -> None:
        if self.alive():
            try:
                self._proc.terminate()
                if self.wait(grace) is None:
                    self._proc.kill()
                    self.wait(grace)
            except (ProcessLookupError, OSError):
                pass
        self._file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()
