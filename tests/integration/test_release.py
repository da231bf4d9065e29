"""What an auditor does with a release, on a fresh clone of this repository's HEAD, the way the
release workflow runs it: `CI=true mithril-build all` (locked, because $CI is set), the
SHA256SUMS and provenance self-checks, `export-inputs`, then `audit --against out/demo --inputs`
with no network at all (`unshare -n`) and a different environment — build path with spaces,
umask, time zone, locale, HOME and user name, one CPU, unrelated variables — which must give
byte-identical outputs ("ALL MATCH").

Only committed files are in the clone: locally, commit before running this test."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, need

pytestmark = pytest.mark.slow


def run(argv, cwd: Path, env: dict, umask: int | None = None, timeout: float = 3600) -> subprocess.CompletedProcess:
    preexec = (lambda: os.umask(umask)) if umask is not None else None
    return subprocess.run([str(a) for a in argv], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout, preexec_fn=preexec, check=False)


@pytest.fixture(scope="module")
def release(tmp_path_factory, demo_project: Path):
    """A fresh clone of HEAD, built as the release workflow builds it; returns (clone, env)."""
    need("git", "mkosi", "unshare", "taskset", "sha256sum")
    clone = tmp_path_factory.mktemp("release") / "clone"
    subprocess.run(["git", "clone", "--quiet", REPO, clone], check=True)
    # The demo build's input store (content-addressed, every file re-hashed on use) saves the downloads.
    store = demo_project / ".mithril/cache/inputs/sha256"
    if store.is_dir():
        shutil.copytree(store, clone / ".mithril/cache/inputs/sha256", copy_function=os.link)
    env = {**os.environ, "CI": "true", "PYTHONPATH": str(clone)}
    res = run([sys.executable, "-m", "pipeline", "all", "--profile", "demo"], clone, env)
    assert res.returncode == 0, res.stderr[-4000:]
    return clone, env


def test_the_release_self_checks(release):
    clone, env = release
    out = clone / "out/demo"
    assert run(["sha256sum", "--strict", "-c", "SHA256SUMS"], out, env).returncode == 0
    res = run([sys.executable, "-m", "pipeline", "provenance", "verify", "--allow-unsigned", "provenance.intoto.jsonl"],
              out, env)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "measurements.json" in (out / "provenance.intoto.jsonl").read_text()


def test_offline_audit_in_another_environment_matches(release, tmp_path):
    clone, env = release
    inputs = tmp_path / "inputs"
    res = run([sys.executable, "-m", "pipeline", "export-inputs", inputs, "--profile", "demo"], clone, env)
    assert res.returncode == 0, res.stderr[-3000:]
    assert len(list((inputs / "sha256").iterdir())) > 100  # the OS image's .debs and the images'

    spaced = tmp_path / "an auditor's tmp"
    home = tmp_path / "home of auditor"
    for d in (spaced, home):
        d.mkdir()
    other = {k: v for k, v in env.items() if k not in ("LANG", "LC_ALL", "LANGUAGE")}
    other.update(TMPDIR=str(spaced), HOME=str(home), USER="auditor", LOGNAME="auditor", TZ="Pacific/Chatham",
                 LANG="fr_FR.UTF-8", LC_ALL="fr_FR.UTF-8", SOURCE_DATE_EPOCH="1", PYTHONHASHSEED="4242",
                 MITHRIL_UNRELATED="x" * 100, CI="true")
    argv = ["unshare", "-n", "taskset", "-c", "0", sys.executable, "-m", "pipeline", "audit",
            "--against", clone / "out/demo", "--repo", clone, "--inputs", inputs]
    res = run(argv, tmp_path, other, umask=0o077)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-4000:]
    assert "ALL MATCH" in res.stdout


def test_a_corrupt_inputs_folder_is_one_line_exit_2(release, tmp_path):
    clone, env = release
    inputs = tmp_path / "inputs"
    assert run([sys.executable, "-m", "pipeline", "export-inputs", inputs, "--profile", "demo"], clone, env).returncode == 0
    victim = sorted((inputs / "sha256").iterdir())[0]
    victim.write_bytes(b"not what it was")
    res = run([sys.executable, "-m", "pipeline", "all", "--profile", "demo", "--inputs", inputs, "--cache-dir",
               tmp_path / "cache"], clone, env)
    assert res.returncode == 2, res.stderr[-3000:]
    lines = [ln for ln in res.stderr.splitlines() if "error" in ln]
    assert len(lines) == 1 and victim.name in lines[0]
    assert not (tmp_path / "cache/stages").exists() or not list((tmp_path / "cache/stages").rglob("_record.json"))
    (inputs / "index.json").unlink()
    res = run([sys.executable, "-m", "pipeline", "all", "--inputs", inputs], clone, env)
    assert res.returncode == 2 and "index.json" in res.stderr and len(res.stderr.strip().splitlines()) == 1
