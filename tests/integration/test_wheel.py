"""mithril-build as users install it: an sdist and a wheel built from a copy of the checkout
(`python3 -m build`, the wheel from the sdist), installed into a fresh venv outside the checkout;
then `init`, `plan`, `render` and the app disk, run from a folder where the checkout cannot be
imported."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, SEED, mb, need

SKIP = shutil.ignore_patterns(".git", ".mithril", "out", "build", "dist", "*.egg-info", "__pycache__", ".tools",
                              "test-artifacts", ".pytest_cache")


def _run(argv: list, cwd: Path, timeout: float = 600, **env) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # the checkout must not leak in
    res = subprocess.run([str(a) for a in argv], cwd=cwd, env={**clean, **env}, capture_output=True, text=True,
                         timeout=timeout, check=False)
    assert res.returncode == 0, f"{argv}: exit {res.returncode}\n{res.stdout[-2000:]}\n{res.stderr[-4000:]}"
    return res


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> tuple[Path, Path]:
    """(the venv's mithril-build, a working folder outside the checkout)."""
    top = tmp_path_factory.mktemp("wheel")
    src = top / "src"
    shutil.copytree(REPO, src, ignore=SKIP, symlinks=True)
    # --no-isolation: the installed setuptools, no download; the wheel is built from the sdist
    _run([sys.executable, "-m", "build", "--no-isolation", "--outdir", top / "dist", src], cwd=top)
    wheels, sdists = sorted((top / "dist").glob("*.whl")), sorted((top / "dist").glob("*.tar.gz"))
    assert len(wheels) == 1 and len(sdists) == 1
    # --system-site-packages: the dependencies (click, pydantic, ...) without a download; our three
    # packages come from the wheel, which the venv's own site-packages put first
    _run([sys.executable, "-m", "venv", "--system-site-packages", top / "venv"], cwd=top)
    _run([top / "venv/bin/python", "-m", "pip", "install", "-q", "--no-deps", "--no-index", wheels[0]], cwd=top)
    work = top / "work"
    work.mkdir()
    return top / "venv/bin/mithril-build", work


def test_the_wheel_is_what_runs(installed):
    exe, work = installed
    venv = exe.parent.parent.resolve()
    code = ("import pipeline, mithril_client, attestation_server\n"
            "print(pipeline.__file__, mithril_client.__file__, attestation_server.__file__, pipeline.starter())")
    out = _run([exe.parent / "python", "-c", code], cwd=work).stdout.split()
    for path in out:
        assert Path(path).resolve().is_relative_to(venv), path
        assert not Path(path).resolve().is_relative_to(REPO), path


def test_init_plan_render_and_appdisk_from_the_wheel(installed, tmp_path):
    need("systemd-repart", "mksquashfs")
    exe, work = installed
    project = work / "proj"
    _run([exe, "init", project, "--seed", SEED], cwd=work)
    for name in ("mithril.yaml", "mithril.lock", "appdisk", "mkosi", "measurements", "model_engine"):
        assert (project / name).exists(), name
    # the starter files are the checkout's, byte for byte (what `init` copies from a checkout)
    for rel in ("mithril.lock", "appdisk/Caddyfile.j2", "mkosi/mkosi.conf.j2", "measurements/schema/measurements.v1.json"):
        assert (project / rel).read_bytes() == (REPO / rel).read_bytes(), rel
    plan = json.loads(_run([exe, "plan", "--project", project, "--json"], cwd=work).stdout)
    assert [s["stage"] for s in plan["stages"]] == ["appdisk", "os", "measurements", "provenance"]
    _run([exe, "render", "--project", project, work / "rendered"], cwd=work)
    # the same render as the checkout's mithril-build makes of the same project
    assert mb("render", "--project", project, tmp_path / "rendered").returncode == 0
    ours = {p.relative_to(work / "rendered"): p.read_bytes() for p in (work / "rendered").rglob("*") if p.is_file()}
    theirs = {p.relative_to(tmp_path / "rendered"): p.read_bytes() for p in (tmp_path / "rendered").rglob("*") if p.is_file()}
    assert ours == theirs and ours
    res = _run([exe, "appdisk", "--project", project], cwd=work, timeout=1800)
    assert (project / "out/demo/application_disk.raw").is_file(), res.stderr[-2000:]
    # The wheel carries the same code and image sources as the checkout: the checkout's
    # mithril-build finds the app disk the wheel built under its own cache key.
    res = mb("plan", "--project", project, "--json", "appdisk")
    assert res.returncode == 0, res.stderr
    stages = {s["stage"]: s for s in json.loads(res.stdout)["stages"]}
    assert stages["appdisk"]["cached"], stages["appdisk"]["reason"]
