"""noop.replay never answers from a memo it cannot read, nor for a file whose identity (as os.lstat
reports it) moved since the memo was written."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pipeline import noop
from pipeline.cache import StageResult
from pipeline.invocation import Invocation


@pytest.fixture
def remembered(tmp_path):
    root, cache = tmp_path / "project", tmp_path / "cache"
    (root / "src").mkdir(parents=True)
    (root / "mithril.yaml").write_text("project: x\n")
    (root / "src" / "a.txt").write_text("a\n")
    result = cache / "stages" / "s" / "k"
    result.mkdir(parents=True)
    (result / "out.txt").write_text("out\n")
    run = noop.start(root, cache, {"profile": None}, full=False)
    assert isinstance(run, noop.Pending)  # no memo yet: the full run
    noop.remember(run, {"s": StageResult(result, {"key": "k"})}, root / "out", [], ["line"], Invocation())
    assert noop.start(root, cache, {"profile": None}, full=False) == ["line"]
    return root, cache, result


def test_other_options_or_a_full_run_are_not_answered(remembered):
    root, cache, _ = remembered
    assert isinstance(noop.start(root, cache, {"profile": "other"}, full=False), noop.Pending)
    assert isinstance(noop.start(root, cache, {"profile": None}, full=True), noop.Pending)


@pytest.mark.parametrize("change", ["rewrite same bytes", "touch", "add file", "remove file", "result edited"])
def test_any_identity_change_takes_the_full_run(remembered, change):
    root, cache, result = remembered
    a = root / "src" / "a.txt"
    if change == "rewrite same bytes":
        st = a.stat()
        a.write_text("a\n")
        os.utime(a, ns=(st.st_atime_ns, st.st_mtime_ns))  # mtime put back: ctime still moved
    elif change == "touch":
        os.utime(a, ns=(1, 1))
    elif change == "add file":
        (root / "src" / "b.txt").write_text("b\n")
    elif change == "remove file":
        a.unlink()
    else:
        (result / "out.txt").write_text("tampered\n")
    assert isinstance(noop.start(root, cache, {"profile": None}, full=False), noop.Pending)


@pytest.mark.parametrize("memo", [b"", b"\xff\xfe", b"[]", b'{"version": 1}', b'{"version": 1, "files": [], "lines": []}',
                                  b'{"version": 2, "files": {}, "lines": ["x"]}', b"[" * 100000])
def test_an_unreadable_memo_is_no_answer(remembered, memo):
    root, cache, _ = remembered
    for path in (cache / noop.FOLDER).glob("*.json"):
        path.write_bytes(memo)
    assert isinstance(noop.start(root, cache, {"profile": None}, full=False), noop.Pending)


def test_a_file_changed_while_the_run_read_it_leaves_no_memo(tmp_path):
    root, cache = tmp_path / "project", tmp_path / "cache"
    root.mkdir()
    (root / "mithril.yaml").write_text("project: x\n")
    run = noop.start(root, cache, {}, full=False)
    inv = Invocation(hashed={str(root / "mithril.yaml"): None})  # files.sha256_file saw it change
    noop.remember(run, {}, root / "out", [], ["line"], inv)
    assert not (cache / noop.FOLDER).exists()


def test_the_memo_rests_on_the_code_of_every_package_stage_keys_cover(tmp_path, monkeypatch):
    """A stage's key covers modules of pipeline, mithril_client and attestation_server
    (graph.code_digest): an edit to any of them must take the full run, so the memo watches them."""
    import shutil

    from pipeline import modules

    code = tmp_path / "site"
    for package in modules.OURS:
        shutil.copytree(modules.ROOTS[package] / package, code / package, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(noop, "ROOTS", {package: code for package in modules.OURS})
    root, cache = tmp_path / "project", tmp_path / "cache"
    root.mkdir()
    (root / "mithril.yaml").write_text("project: x\n")
    for rel in ("pipeline/templates.py", "mithril_client/tpm2.py", "attestation_server/__init__.py"):
        run = noop.start(root, cache, {"profile": None}, full=False)
        assert isinstance(run, noop.Pending)
        noop.remember(run, {}, root / "out", [], ["line"], Invocation())
        assert noop.start(root, cache, {"profile": None}, full=False) == ["line"]
        with open(code / rel, "a") as f:
            f.write("# edited\n")
        assert isinstance(noop.start(root, cache, {"profile": None}, full=False), noop.Pending), rel


def test_what_the_memo_rests_on_is_the_commands_own():
    """files hashed, tools probed and warnings given belong to one command (invocation.py): a tool
    an earlier command in this process probed is recorded again by the next, and nothing of the
    earlier one's reaches it (with a process-wide cache the second command recorded no tool)."""
    from pipeline import graph, invocation, log
    from pipeline.files import sha256_file
    from tests.conftest import cli

    first = invocation.begin()
    assert graph.tool_version("sh", "-c", "echo v1") == "v1"
    log.warn("from the first command")
    sha256_file(Path(__file__))
    assert "sh" in first.tools and first.warnings and str(Path(__file__)) in first.hashed
    assert cli("--version").returncode == 0  # cli.main starts the next command's invocation
    second = invocation.current()
    assert second is not first and not (second.tools or second.warnings or second.hashed)
    graph.tool_version("sh", "-c", "echo v1")
    assert second.tools == {"sh"}
