"""Session fixtures for integration tests: one demo project and one full demo build, shared."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import mb, need, new_project


@pytest.fixture(scope="session")
def demo_project(tmp_path_factory) -> Path:
    """A starter project (mithril-build init) with its own cache folder."""
    return new_project(tmp_path_factory.mktemp("demo") / "project")


@pytest.fixture(scope="session")
def demo_build(demo_project: Path) -> Path:
    """`mithril-build all` for the demo profile (OS + app disk + measurements + provenance);
    returns out/demo. Built once per test session."""
    need("mkosi", "systemd-repart", "mksquashfs", "/usr/lib/systemd/ukify")
    res = mb("all", "--project", demo_project, "--unlocked", timeout=3600)
    if res.returncode != 0:
        pytest.fail(f"mithril-build all failed (exit {res.returncode}):\n{res.stderr[-4000:]}")
    return demo_project / "out" / "demo"


@pytest.fixture(scope="session")
def demo_rebuild(tmp_path_factory, demo_build: Path) -> Path:
    """A second, independent clean build of the demo profile (its own project copy and empty cache,
    so also an empty mkosi package cache); returns its out/demo. Reproducibility tests compare it
    with `demo_build` byte for byte — share it rather than building a third time."""
    project = new_project(tmp_path_factory.mktemp("demo-again") / "project")
    res = mb("all", "--project", project, "--unlocked", timeout=3600)
    if res.returncode != 0:
        pytest.fail(f"second mithril-build all failed (exit {res.returncode}):\n{res.stderr[-4000:]}")
    return project / "out" / "demo"
