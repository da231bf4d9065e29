"""Shared test helpers. Tests choose --locked/--unlocked themselves, so $CI must not decide.

In CI ($CI set) a skipped test is a failure: CI must not go green because a tool was missing or
the archive was unreachable. Locally a skip stays a skip, with its reason. Only what no machine
here has (a GPU, Azure, the Hub) may skip in CI: mark such a test `unreachable_here`."""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

IN_CI = os.environ.pop("CI", "").lower() not in ("", "0", "false", "no")
REPO = Path(__file__).resolve().parent.parent


def mb(*args, cwd: Path | None = None, env: dict | None = None, timeout: float = 1800) -> subprocess.CompletedProcess:
    """Run the mithril-build CLI in a subprocess; returns the completed process (text)."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "pipeline", *map(str, args)], check=False, cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


def mc(*args, cwd: Path | None = None, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run the mithril-client CLI (python3 -m mithril_client) in a subprocess."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "mithril_client", *map(str, args)], check=False, cwd=cwd,
                          env=full_env, capture_output=True, text=True, timeout=timeout)


@dataclass(frozen=True)
class CliResult:
    returncode: int
    stdout: str
    stderr: str


def cli(*args, cwd: Path | None = None, env: dict | None = None) -> CliResult:
    """Run the mithril-build CLI in this process (`pipeline.cli.main`, streams captured): for the
    many quick cases of the robustness suite, where a subprocess each would dominate."""
    from pipeline import cli as entry
    from pipeline import log

    streams = [io.TextIOWrapper(io.BytesIO(), encoding="utf-8", errors="backslashreplace") for _ in range(2)]
    saved = sys.stdout, sys.stderr, sys.argv, dict(os.environ)
    code = 0
    with contextlib.chdir(cwd or os.getcwd()):
        sys.stdout, sys.stderr = streams
        sys.argv = ["mithril-build", *map(str, args)]
        os.environ.update(env or {})
        try:
            entry.main([str(a) for a in args])
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        finally:
            sys.stdout, sys.stderr, sys.argv = saved[:3]
            os.environ.clear()
            os.environ.update(saved[3])
            log._depth = 0
    out, err = (s.flush() or s.buffer.getvalue().decode("utf-8", errors="backslashreplace") for s in streams)
    return CliResult(code, out, err)


def need(*tools: str) -> None:
    """Skip the calling test when a system tool is missing (run scripts/setup.sh to install them)."""
    path = os.environ.get("PATH", "") + ":/usr/sbin:/usr/bin:/sbin:/bin"
    missing = [t for t in tools if not (shutil.which(t, path=path) or Path(t).exists())]
    if missing:
        pytest.skip(f"needs {', '.join(missing)} (installed by scripts/setup.sh)")


SEED = "5c8a2e4f-6d1b-4a7e-9b3c-2f0e1d4c5b6a"  # the same for every test project, so their builds compare


def new_project(dest: Path) -> Path:
    """A starter project made by `mithril-build init` (with the tests' fixed seed)."""
    res = mb("init", dest, "--seed", SEED)
    assert res.returncode == 0, res.stderr
    return dest


@pytest.fixture(scope="session")
def debian_archive(tmp_path_factory):
    """The verified, merged Debian index of the suites in this repository's mithril.lock (fetched
    from deb.debian.org and security.debian.org once per session)."""
    from pipeline import debian
    from pipeline import lock as lk

    need("gpgv", debian.KEYRING)
    return debian.archive(lk.load(REPO / "mithril.lock").debian, tmp_path_factory.mktemp("debian-indices"))


def pytest_configure(config):
    config.addinivalue_line("markers", "unreachable_here: may skip in CI too (needs a GPU, Azure or the Hub)")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if IN_CI and report.skipped and not hasattr(report, "wasxfail") \
            and item.get_closest_marker("unreachable_here") is None:
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"skipped in CI, which counts as a failure: {reason}"
