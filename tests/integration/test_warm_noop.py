"""The warm no-op (pipeline/noop.py): `all` with nothing to do answers from file identities without
loading the build, and never answers for a file that changed since the last full run."""

from __future__ import annotations

import os
from pathlib import Path

from tests.conftest import mb


def _all(project: Path, *args: str):
    """`all` with Python's import log: whether the build (pydantic, the stages) was loaded."""
    res = mb("all", "--project", project, "--unlocked", *args, env={"PYTHONPROFILEIMPORTTIME": "1"})
    assert res.returncode == 0, res.stderr[-3000:]
    lines = [ln for ln in res.stderr.splitlines() if not ln.startswith("import time:")]
    loaded = "pipeline.graph" in res.stderr or "pydantic" in res.stderr
    return lines, loaded


def _warm(project: Path) -> list[str]:
    """Make sure a memo of the current state exists (a full run writes it); the lines it prints."""
    _all(project)
    lines, loaded = _all(project)
    assert not loaded, "the second of two identical runs still loaded the build"
    return lines


def test_a_run_with_nothing_to_do_answers_without_loading_the_build(demo_build):
    project = demo_build.parent.parent
    full, loaded = _all(project, "--verify")  # --verify: always the full run
    assert loaded
    assert _warm(project) == full  # the same answer, line for line
    assert all(ln.startswith(("profile demo:", "✓ ")) and "cached" in ln for ln in full[1:])


def test_a_touched_or_rewritten_file_takes_the_full_path_and_is_rehashed(demo_build):
    project = demo_build.parent.parent
    _warm(project)
    template = project / "appdisk" / "setup.d" / "main"
    template.write_bytes(template.read_bytes())  # same bytes, new ctime: identity changed
    lines, loaded = _all(project)
    assert loaded and any("✓ appdisk: cached" in ln for ln in lines)  # re-hashed, still a hit
    assert not _all(project)[1]  # and remembered again


def test_a_tampered_output_is_never_answered_for(demo_build):
    """A byte changed in a published output (a hard link of the cached result) and the mtime put
    back: ctime still moved, so the full run re-hashes, discards and rebuilds that result."""
    project = demo_build.parent.parent
    _warm(project)
    target = demo_build / "measurements.json"
    good, st = target.read_bytes(), target.stat()
    target.write_bytes(good.replace(b'"version"', b'"versioN"', 1))
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))
    lines, loaded = _all(project)
    assert loaded
    assert any("discarding cached measurements result" in ln for ln in lines), lines
    assert target.read_bytes() == good


def test_a_file_added_to_the_project_or_other_options_take_the_full_path(demo_build):
    project = demo_build.parent.parent
    _warm(project)
    extra = project / "notes.txt"  # read by no stage: the full run finds every stage cached
    try:
        extra.write_text("x\n")
        lines, loaded = _all(project)
        assert loaded and all("cached" in ln for ln in lines[1:])
    finally:
        extra.unlink()
    _warm(project)
    assert _all(project, "--profile", "demo")[1]  # other options: their own memo, not this one
    assert _all(project, "--explain")[1]
