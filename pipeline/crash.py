"""Crash reports: what an internal error (a bug, exit 70) leaves behind for its report, the
redacted traceback in a file: under the project's cache (`crash/`) once the command knows it
(Invocation.crash_dir), else in the temp folder. cli.main decides what is a crash."""

from __future__ import annotations

import datetime
import os
import tempfile
import traceback
from pathlib import Path

from .run import redact


def write_report(exc: BaseException, argv: list[str], crash_dir: Path | None) -> str:
    """Write the redacted traceback (after the version and the command line); the file's path."""
    text = redact("".join(traceback.format_exception(exc)))
    text = f"mithril-build {version()} {' '.join(argv)}\n{text}"
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    for folder in ([crash_dir / "crash"] if crash_dir else []) + [Path(tempfile.gettempdir())]:
        try:
            folder.mkdir(parents=True, exist_ok=True)
            fd, path = tempfile.mkstemp(dir=folder, prefix=f"mithril-build-crash-{stamp}-", suffix=".txt")
            with os.fdopen(fd, "w") as f:
                f.write(redact(text))
            return path
        except OSError:
            continue
    return "(nowhere: no writable folder)"


def version() -> str:
    from importlib import metadata

    try:
        return metadata.version("mithril-build")
    except metadata.PackageNotFoundError:
        return "unknown"
