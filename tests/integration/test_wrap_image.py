"""Wrap your own app: an image built with podman (its own layers and config, served on port 9000)
becomes a project with `mithril-build init --image`, is built, booted with `run`, and reached
through `connect` over the attested channel — the page it serves is the one we put in it."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests import podman
from tests.conftest import SEED, mb, need
from tests.stack import free_port

pytestmark = pytest.mark.slow
PAGE = b"<!doctype html><title>wrapped</title><p>my own app, attested</p>\n"
CONTAINERFILE = """FROM BASE
COPY page.html /srv/index.html
EXPOSE 9000
ENTRYPOINT ["/bin/busybox", "httpd", "-f", "-p", "9000", "-h", "/srv"]
"""


@pytest.fixture(scope="module")
def wrapped(tmp_path_factory, demo_project: Path, demo_build: Path):
    need("podman", "qemu-system-x86_64", "swtpm", "swtpm_setup")
    work = tmp_path_factory.mktemp("wrap")
    archive = podman.build(work, CONTAINERFILE, {"page.html": PAGE})["docker"]
    project = work / "shop"
    res = mb("init", project, "--image", archive, "--seed", SEED)
    assert res.returncode == 0, res.stderr
    # the demo's cache: the OS image (same seed, platform, mode) is a cache hit
    res = mb("all", "--project", project, "--unlocked", "--cache-dir", demo_project / ".mithril/cache", timeout=3600)
    assert res.returncode == 0, res.stderr[-3000:]
    return project


def test_init_image_project_is_reached_through_connect(wrapped: Path):
    config = yaml.safe_load((wrapped / "mithril.yaml").read_text())
    assert config["appdisk"]["app_port"] == 9000 and config["default_profile"] == "app"
    files = {f["path"] for f in json.loads((wrapped / "out/app/appdisk.json").read_text())["files"]}
    assert "rootfs/app/srv/index.html" in files and "rootfs/caddy/usr/bin/caddy" in files
    port = free_port()
    with open(wrapped / "run.err", "wb") as err:
        proc = subprocess.Popen([sys.executable, "-m", "pipeline", "run", "--project", str(wrapped), "--port", str(port),
                                 "--timeout", "1500", "--json"], stdout=subprocess.PIPE, stderr=err, text=True)
    try:
        line = proc.stdout.readline()
        assert line, (wrapped / "run.err").read_text()[-3000:]
        url = json.loads(line)["url"]
        res = mb("connect", url + "/", cwd=wrapped, timeout=300)
        assert res.returncode == 0, res.stderr
        assert res.stdout.encode() == PAGE
        assert next(x for x in res.stderr.splitlines() if x.startswith("ak ")).split()[-1] == "ok"
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=120) == 0
