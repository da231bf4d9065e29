"""The images built from pinned .debs (caddy, attestation-server), end to end: byte-identical
across two builds from empty caches, readable by skopeo, runnable (chroot), and refusing a .deb
whose sha256 differs from the lock. The .debs come from deb.debian.org / security.debian.org."""

from __future__ import annotations

import json
import os
import re
import tarfile
from pathlib import Path

import pytest
import yaml

from pipeline import images
from pipeline.run import SYSTEM_PATH, run
from tests.conftest import REPO, mb, need, new_project

NAMES = sorted(images.RECIPES)


def build(project: Path, cache: Path, name: str, out: Path, *extra) -> Path:
    res = mb("image", name, "-o", out, "--project", project, "--cache-dir", cache, "--locked", *extra)
    assert res.returncode == 0, res.stderr
    return out


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    return new_project(tmp_path_factory.mktemp("images") / "p")


@pytest.fixture(scope="module")
def built(project, tmp_path_factory) -> dict[str, tuple[Path, Path]]:
    """Each image built twice, each time from an empty cache (so every .deb is fetched again)."""
    out = tmp_path_factory.mktemp("out")
    return {name: tuple(build(project, out / f"cache{i}", name, out / f"{name}.{i}.tar") for i in (1, 2))
            for name in NAMES}


@pytest.mark.parametrize("name", NAMES)
def test_two_builds_from_empty_caches_are_identical(built, name):
    one, two = built[name]
    assert one.read_bytes() == two.read_bytes()


@pytest.mark.parametrize("name", NAMES)
def test_skopeo_reads_both_formats(built, name):
    need("skopeo")
    recipe = images.RECIPES[name]
    for transport in ("oci-archive", "docker-archive"):
        info = json.loads(run(["skopeo", "inspect", "--config", f"{transport}:{built[name][0]}"]).text)
        cfg = info["config"]
        assert cfg["Entrypoint"] == list(recipe.entrypoint) and cfg["User"] == recipe.user
        assert cfg["Env"] == list(recipe.env), transport
    if name == "attestation-server":
        assert "PYTHONDONTWRITEBYTECODE=1" in cfg["Env"] and "PYTHONPATH=/opt/mithril" in cfg["Env"]


def unpack(archive: Path, dest: Path) -> Path:
    """The image's single layer, unpacked with GNU tar into dest."""
    with tarfile.open(archive) as outer:
        index = json.load(outer.extractfile("index.json"))
        manifest = json.load(outer.extractfile("blobs/sha256/" + index["manifests"][0]["digest"][7:]))
        layer = outer.extractfile("blobs/sha256/" + manifest["layers"][0]["digest"][7:]).read()
    dest.mkdir()
    run(["tar", "-x", "-C", dest], input=layer, extra_env={"PATH": SYSTEM_PATH})
    return dest


@pytest.fixture
def chroot():
    need("chroot")
    if os.geteuid() != 0:
        pytest.skip("chroot needs root")

    def go(root: Path, *argv, user: str = "0:0", env: dict | None = None):
        return run(["chroot", f"--userspec={user}", root, *argv], env={**(env or {}), "PATH": SYSTEM_PATH})
    return go


def test_caddy_runs(built, tmp_path, chroot):
    root = unpack(built["caddy"][0], tmp_path / "root")
    assert chroot(root, "/usr/bin/caddy", "version", user="65534:65534").text.startswith("2.6.2")
    assert (root / "tmp").stat().st_mode & 0o7777 == 0o1777
    assert (root / "etc/passwd").read_text().splitlines()[1].startswith("nobody:x:65534:65534:")
    assert not (root / "usr/share/man").exists() and not (root / "var/lib/dpkg").exists()


def test_attestation_server_runs(built, tmp_path, chroot):
    root = unpack(built["attestation-server"][0], tmp_path / "root")
    modules = ["ssl", "http.server", "cryptography", "cryptography.hazmat.primitives.asymmetric.ec", "mithril_client"]
    if (REPO / "attestation_server").is_dir():
        modules.append("attestation_server")
    env = dict(e.split("=", 1) for e in images.RECIPES["attestation-server"].env)
    res = chroot(root, "/usr/bin/python3", "-c", f"import {', '.join(modules)}; print(ssl.OPENSSL_VERSION)", env=env)
    assert res.text.startswith("OpenSSL 3.0")
    assert (root / "opt/mithril/mithril_client/__init__.py").is_file()
    assert not [p for p in root.rglob("*") if p.name == "__pycache__" or p.suffix == ".pyc"]


def _edit_lock(project: Path, fn) -> None:
    doc = yaml.safe_load((project / "mithril.lock").read_text())
    fn(doc)
    (project / "mithril.lock").write_text(yaml.safe_dump(doc))


def _one_error(res) -> str:
    lines = [ln for ln in res.stderr.splitlines() if ln.startswith("mithril-build: error:")]
    assert res.returncode == 2 and len(lines) == 1 and "Traceback" not in res.stderr, res.stderr
    return lines[0]


def test_wrong_deb_sha256_is_refused(tmp_path):
    project = new_project(tmp_path / "p")
    _edit_lock(project, lambda d: d["debs"]["caddy"]["caddy"].update(sha256="0" * 64))
    res = mb("appdisk", "--project", project, "--cache-dir", tmp_path / "cache", "--locked")
    assert "debs.caddy.caddy.sha256: expected 000" in _one_error(res)
    assert not (project / "out").exists()
    assert not list((tmp_path / "cache/inputs/sha256").glob("0000*"))  # the wrong file is not kept


def test_tampered_deb_in_the_store_is_refused(built, project, tmp_path):
    """The store re-hashes a .deb on every use: a changed file is refused (and removed)."""
    cache = tmp_path / "cache"
    pin = yaml.safe_load((project / "mithril.lock").read_text())["debs"]["caddy"]["media-types"]
    stored = cache / "inputs/sha256" / pin["sha256"]
    build(project, cache, "caddy", tmp_path / "a.tar")
    stored.write_bytes(stored.read_bytes()[:-1] + b"\0")
    res = mb("image", "caddy", "-o", tmp_path / "b.tar", "--project", project, "--cache-dir", cache)
    assert "debs.caddy.media-types.sha256: expected" in _one_error(res)
    assert not stored.exists() and not (tmp_path / "b.tar").exists()


def test_missing_pins(tmp_path):
    project = new_project(tmp_path / "p")
    _edit_lock(project, lambda d: d["debs"].pop("caddy"))
    res = mb("image", "caddy", "-o", tmp_path / "c.tar", "--project", project, "--cache-dir", tmp_path / "c", "--locked")
    assert "mithril.lock: debs.caddy: not pinned (--locked)" in _one_error(res)
    # Unlocked, the image is resolved from the archive, with a warning; `lock` pins it again.
    res = mb("image", "caddy", "-o", tmp_path / "c.tar", "--project", project, "--cache-dir", tmp_path / "c", "--unlocked")
    assert res.returncode == 0 and "debs.caddy: not pinned; resolving from the Debian archive" in res.stderr, res.stderr
    res = mb("lock", "--project", project, "--cache-dir", tmp_path / "c", "--json")
    entries = {e["entry"]: e["state"] for e in json.loads(res.stdout)["entries"]}
    assert re.match(r"pinned now \(\d+ packages: caddy 2\.6\.2", entries["debs.caddy"]), entries
    assert entries["debs.attestation-server"].startswith("pinned (")
    assert "caddy" in yaml.safe_load((project / "mithril.lock").read_text())["debs"]["caddy"]


def test_unknown_image_name(project, tmp_path):
    res = mb("image", "nginx", "-o", tmp_path / "x.tar", "--project", project)
    assert "command line: no image 'nginx' (one of: caddy, attestation-server)" in _one_error(res)
