"""The three distributions as users install them: sdists and wheels of mithril-client (client/),
mithril-attestation-server (server/) and mithril-build (the root) built from a copy of the
checkout (`python3 -m build`, each wheel from its sdist), installed into fresh venvs outside the
checkout. mithril-build: `init`, `plan`, `render` and the app disk, run from a folder where the
checkout cannot be imported. mithril-client: alone in a venv with nothing but its dependencies,
its `--help` and a `verify` of real captured evidence."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.conftest import REPO, SEED, mb, need

SKIP = shutil.ignore_patterns(".git", ".mithril", "out", "build", "dist", "*.egg-info", "__pycache__", ".tools",
                              "test-artifacts", ".pytest_cache")
DISTS = {"client": "mithril_client", "server": "mithril_attestation_server", ".": "mithril_build"}


def _run(argv: list, cwd: Path, timeout: float = 600, check: bool = True, **env) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # the checkout must not leak in
    res = subprocess.run([str(a) for a in argv], cwd=cwd, env={**clean, **env}, capture_output=True, text=True,
                         timeout=timeout, check=False)
    assert res.returncode == 0 or not check, f"{argv}: exit {res.returncode}\n{res.stdout[-2000:]}\n{res.stderr[-4000:]}"
    return res


EPOCH = "1700000000"  # SOURCE_DATE_EPOCH: the wheels' member times (the release's would be its commit's)


def build_all(src: Path, out: Path) -> Path:
    for folder in DISTS:
        # --no-isolation: the installed setuptools, no download; the wheel is built from the sdist
        _run([sys.executable, "-m", "build", "--no-isolation", "--outdir", out, src / folder], cwd=src.parent,
             SOURCE_DATE_EPOCH=EPOCH)
    for name in DISTS.values():
        assert len(list(out.glob(f"{name}-*.whl"))) == 1, name
        assert len(list(out.glob(f"{name}-*.tar.gz"))) == 1, name
    return out


@pytest.fixture(scope="module")
def dist(tmp_path_factory) -> Path:
    """A folder with the sdist and the wheel of each of the three distributions."""
    top = tmp_path_factory.mktemp("dists")
    shutil.copytree(REPO, top / "src", ignore=SKIP, symlinks=True)
    return build_all(top / "src", top / "dist")


def test_the_wheels_build_byte_identical_twice(dist, tmp_path):
    """Another copy of the checkout, its files with other mtimes (shutil.copy), built again: the same
    wheels, byte for byte (the sdists are not: their tar members carry the files' mtimes)."""
    shutil.copytree(REPO, tmp_path / "src", ignore=SKIP, symlinks=True, copy_function=shutil.copy)
    again = build_all(tmp_path / "src", tmp_path / "dist")
    for name in DISTS.values():
        assert wheel(again, name).read_bytes() == wheel(dist, name).read_bytes(), name


def wheel(dist: Path, name: str) -> Path:
    return next(dist.glob(f"{name}-*.whl"))


def metadata(whl: Path) -> tuple[list[str], list[str]]:
    """(the wheel's file names, its Requires-Dist lines)."""
    with zipfile.ZipFile(whl) as z:
        names = z.namelist()
        meta = z.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    return names, sorted(line.split(":", 1)[1].strip() for line in meta.splitlines() if line.startswith("Requires-Dist:"))


@pytest.fixture(scope="module")
def installed(dist, tmp_path_factory) -> tuple[Path, Path]:
    """(the venv's mithril-build, a working folder outside the checkout)."""
    top = tmp_path_factory.mktemp("wheel")
    # --system-site-packages: the dependencies (click, pydantic, ...) without a download; our three
    # packages come from the wheels, which the venv's own site-packages put first
    _run([sys.executable, "-m", "venv", "--system-site-packages", top / "venv"], cwd=top)
    _run([top / "venv/bin/python", "-m", "pip", "install", "-q", "--no-deps", "--no-index",
          *(wheel(dist, name) for name in DISTS.values())], cwd=top)
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
    # the attestation-server image takes mithril_client and attestation_server from where the
    # venv's wheels installed them: the checkout's image, byte for byte
    _run([exe, "image", "attestation-server", "--project", project, "-o", work / "as.tar"], cwd=work)
    assert mb("image", "attestation-server", "--project", project, "-o", tmp_path / "as.tar").returncode == 0
    assert (work / "as.tar").read_bytes() == (tmp_path / "as.tar").read_bytes()


def test_each_distribution_holds_its_own_package_and_names_the_others(dist):
    """Dependencies point one way: build -> client <- server. Each wheel holds its package as the
    checkout has it (the client's trust anchors included) and nothing else."""
    files = {}
    for name in DISTS.values():
        names, requires = metadata(wheel(dist, name))
        files[name] = {n.split("/")[0] for n in names} - {next(n for n in names if ".dist-info/" in n).split("/")[0]}
        if name == "mithril_client":
            assert requires == ["cryptography>=42", 'pyyaml>=6; extra == "yaml"']
            ours = sorted(p.relative_to(REPO).as_posix() for p in (REPO / "mithril_client").rglob("*")
                          if p.is_file() and "__pycache__" not in p.parts)
            assert sorted(n for n in names if n.startswith("mithril_client/")) == ours
        elif name == "mithril_attestation_server":
            assert requires == ["cryptography>=42", "mithril-client==0.1.0"]
        else:
            assert {"mithril-client==0.1.0", "mithril-attestation-server==0.1.0"} <= set(requires), requires
    assert files == {"mithril_client": {"mithril_client"}, "mithril_attestation_server": {"attestation_server"},
                     "mithril_build": {"pipeline"}}


CLIENT_CHECK = """
import importlib, importlib.metadata as md, pkgutil, sys
before = set(sys.modules)  # what the interpreter loaded at start (site, .pth hooks)
import mithril_client
from mithril_client import AttestedSession, verify_evidence
for m in pkgutil.walk_packages(mithril_client.__path__, "mithril_client."):
    if m.name != "mithril_client.__main__":  # runs the CLI
        importlib.import_module(m.name)
from mithril_client.gpu import check
check.device_root()  # a trust anchor, read from the installed package data
# cryptography and its own bindings (_openssl, cffi)
allowed = set(sys.stdlib_module_names) | {"mithril_client", "cryptography", "_openssl", "cffi", "_cffi_backend"}
print(mithril_client.__file__)
print(*sorted({n.split(".")[0] for n in set(sys.modules) - before} - allowed))
print(*sorted(d.metadata["Name"].lower() for d in md.distributions()))
"""


@pytest.mark.filterwarnings("ignore:Parsed a serial number")
def test_the_client_alone_in_a_fresh_venv(dist, tmp_path):
    """`pip install mithril-client` as a data owner runs it: a venv without the system's packages,
    the client's wheel and what pip resolves for it from the index (cryptography), nothing else.
    Then its `--help`, and `verify` of real evidence captured on an Azure SEV-SNP CVM
    (tests/fixtures/azure/SOURCES.md): the same output as the checkout's `attest verify`."""
    from tests.unit.test_attest_azure_capture import write_capture

    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", venv], cwd=tmp_path)
    _run([venv / "bin/python", "-m", "pip", "install", "-q", wheel(dist, "mithril_client")], cwd=tmp_path, timeout=900)
    where, extra, dists = (_run([venv / "bin/python", "-c", CLIENT_CHECK], cwd=tmp_path).stdout.splitlines() + ["", ""])[:3]
    assert Path(where).resolve().is_relative_to(venv.resolve()), where
    assert extra.split() == [], f"mithril_client imports more than cryptography: {extra}"
    installed = set(dists.split())
    assert {"mithril-client", "cryptography"} <= installed
    assert not installed & {"click", "pydantic", "jinja2", "pyyaml", "sh", "huggingface-hub", "mithril-build",
                            "mithril-attestation-server"}, installed
    assert not [d for d in installed if d.startswith("azure")], installed
    res = _run([venv / "bin/mithril-client", "--help"], cwd=tmp_path)
    assert "connect" in res.stdout and "verify" in res.stdout
    d = tmp_path / "capture"
    d.mkdir()
    nonce = write_capture(d)
    args = ["--evidence", d / "evidence.json", "--nonce", nonce, "--measurements", d / "measurements.json", "--json"]
    res = _run([venv / "bin/mithril-client", "verify", *args], cwd=tmp_path, check=False)
    rows = {r["check"]: r["result"] for r in json.loads(res.stdout)["rows"]}
    # every row but the TLS binding (the capture is not from a Mithril image: docs in the unit test)
    assert res.returncode == 1 and {c for c, r in rows.items() if r != "ok"} == {"tls binding"}, rows
    assert rows["ak"] == "ok" and rows["snp vcek chain"] == "ok"
    assert res.stdout == mb("attest", "verify", *args).stdout
    res = _run([venv / "bin/mithril-client", "verify", *args[:2], "--nonce", "ab" * 32, *args[4:]], cwd=tmp_path,
               check=False)
    assert res.returncode == 1 and {r["check"]: r["result"] for r in json.loads(res.stdout)["rows"]}["nonce"] == "MISMATCH"
