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


def test_the_client_is_its_own_distribution_needing_cryptography_only(tmp_path):
    """client/: the mithril-client sdist and wheel (the SDK alone), installed in a fresh venv; the
    whole package imports with nothing but the standard library and cryptography."""
    src = tmp_path / "src"
    shutil.copytree(REPO, src, ignore=SKIP, symlinks=True)
    _run([sys.executable, "-m", "build", "--no-isolation", "--outdir", tmp_path / "dist", src / "client"], cwd=tmp_path)
    wheel, = (tmp_path / "dist").glob("mithril_client-*.whl")
    import zipfile

    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        meta = z.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    requires = sorted(line.split(":", 1)[1].strip() for line in meta.splitlines() if line.startswith("Requires-Dist:"))
    assert requires == ["cryptography>=42", 'pyyaml>=6; extra == "yaml"']
    assert {n.split("/")[0] for n in names} == {"mithril_client", wheel.name.split("-py3")[0] + ".dist-info"}
    # the package as the checkout has it, trust anchors included
    ours = sorted(p.relative_to(REPO).as_posix() for p in (REPO / "mithril_client").rglob("*")
                  if p.is_file() and "__pycache__" not in p.parts)
    assert sorted(n for n in names if n.startswith("mithril_client/")) == ours
    _run([sys.executable, "-m", "venv", "--system-site-packages", tmp_path / "venv"], cwd=tmp_path)
    _run([tmp_path / "venv/bin/python", "-m", "pip", "install", "-q", "--no-deps", "--no-index", wheel], cwd=tmp_path)
    code = """
import importlib, pkgutil, sys
before = set(sys.modules)  # what the interpreter loaded at start (site, .pth hooks)
import mithril_client
from mithril_client import AttestedSession, verify_evidence
for m in pkgutil.walk_packages(mithril_client.__path__, "mithril_client."):
    importlib.import_module(m.name)
from mithril_client.gpu import check
check.device_root()  # a trust anchor, read from the installed package data
# cryptography and its own bindings (_openssl, cffi)
allowed = set(sys.stdlib_module_names) | {"mithril_client", "cryptography", "_openssl", "cffi", "_cffi_backend"}
print(mithril_client.__file__)
print(*sorted({n.split(".")[0] for n in set(sys.modules) - before} - allowed))
"""
    where, extra = (_run([tmp_path / "venv/bin/python", "-c", code], cwd=tmp_path).stdout.splitlines() + [""])[:2]
    assert Path(where).resolve().is_relative_to((tmp_path / "venv").resolve()), where
    assert extra.split() == [], f"mithril_client imports more than cryptography: {extra}"
