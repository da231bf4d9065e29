"""compare on real demo builds: two clean builds match; one changed appdisk/ file is found."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.conftest import mb

pytestmark = pytest.mark.slow


def test_two_clean_builds_match(demo_build: Path, demo_rebuild: Path):
    res = mb("compare", demo_build, demo_rebuild)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "ALL MATCH" in res.stdout and "DIFFER" not in res.stdout
    verified = mb("provenance", "verify", "--allow-unsigned", demo_build / "provenance.intoto.jsonl")
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert "NO SIGNATURE IS CHECKED" in verified.stderr
    unsigned = mb("provenance", "verify", demo_build / "provenance.intoto.jsonl")
    assert unsigned.returncode == 1 and "no --key" in unsigned.stdout


def test_changed_appdisk_file_is_named(demo_project: Path, demo_build: Path, tmp_path: Path):
    project = tmp_path / "project"
    shutil.copytree(demo_project, project, symlinks=True, ignore=shutil.ignore_patterns("out", ".mithril"))
    with open(project / "appdisk" / "setup.d" / "main", "a") as f:
        f.write("# one changed line\n")
    # Reuse the first build's cache: only appdisk, measurements and provenance rebuild.
    res = mb("all", "--project", project, "--unlocked", "--cache-dir", demo_project / ".mithril" / "cache",
             timeout=3600)
    assert res.returncode == 0, res.stderr[-4000:]

    res = mb("compare", "--json", demo_build, project / "out" / "demo")
    assert res.returncode == 1, res.stderr
    report = json.loads(res.stdout)
    status = {r["artifact"]: r["status"] for r in report["artifacts"]}
    for name in ("application_disk.raw", "measurements.json", "provenance.intoto.jsonl"):
        assert status[name] == "DIFFER", name
    assert [f["path"] for f in report["disk_files"]["application_disk.raw"]] == ["setup.d/main"]
    assert {m["item"] for m in report["measurements"] if not m["match"]} >= {"PCR 15", "roothash"}


def test_audit_rebuilds_the_recorded_commit(demo_project: Path, demo_build: Path, tmp_path: Path):
    """A committed project is built, then audited: clone of the recorded commit, --locked rebuild,
    compare. The shared cache keeps it short; the rebuild path is the same as with a fresh one."""
    from pipeline.run import run

    repo = tmp_path / "repo"
    shutil.copytree(demo_project, repo, symlinks=True, ignore=shutil.ignore_patterns("out", ".mithril"))
    cache = demo_project / ".mithril" / "cache"
    # A --locked build needs the OS package versions recorded: build, `lock`, then commit.
    for args in (("all", "--unlocked"), ("lock",)):
        res = mb(*args, "--project", repo, "--cache-dir", cache, timeout=3600)
        assert res.returncode == 0, res.stderr[-4000:]
    for argv in (["init", "-q"], ["add", "-A"],
                 ["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "release"]):
        run(["git", *argv], cwd=repo)
    res = mb("all", "--project", repo, "--locked", "--cache-dir", cache, timeout=3600)
    assert res.returncode == 0, res.stderr[-4000:]
    release = repo / "out" / "demo"
    stmt = json.loads((release / "provenance.intoto.jsonl").read_text())
    source = stmt["predicate"]["buildDefinition"]["resolvedDependencies"][0]
    assert source["annotations"]["dirty"] is False and len(source["digest"]["gitCommit"]) == 40

    res = mb("audit", "--against", release, "--repo", repo, "--cache-dir", cache, timeout=3600)
    assert res.returncode == 0, res.stdout + res.stderr[-4000:]
    assert "ALL MATCH" in res.stdout
