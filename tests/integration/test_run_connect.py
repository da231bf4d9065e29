"""Attested consumption end to end on a real boot: `mithril-build run` boots the production demo
under QEMU + OVMF + swtpm (EK certified by a CA made for this boot), and `mithril-build connect`,
run in the project folder with no options, attests the guest and fetches the app's page over the
TLS channel that ends in the guest's Caddy. Then the refusals: the measurements of a build whose
app disk differs by one file (PCR 15), and a TLS proxy with its own certificate in between."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import mb, need
from tests.stack import TlsProxy, free_port

pytestmark = pytest.mark.slow
BOOT_TIMEOUT = 1500  # a ceiling for a stuck guest, not a performance goal


def keep_log(log: Path, name: str) -> None:
    if log.exists() and os.environ.get("MITHRIL_TEST_ARTIFACTS"):
        target = Path(os.environ["MITHRIL_TEST_ARTIFACTS"]) / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(log, target)


@pytest.fixture(scope="module")
def served(demo_build: Path):
    """`mithril-build run --json` in the background until the module is done; yields (project, url)."""
    need("qemu-system-x86_64", "swtpm", "swtpm_setup", "caddy")
    project = demo_build.parent.parent
    port = free_port()
    with open(project / "run.err", "wb") as err:
        proc = subprocess.Popen([sys.executable, "-m", "pipeline", "run", "--project", str(project), "--port",
                                 str(port), "--timeout", str(BOOT_TIMEOUT), "--json"], stdout=subprocess.PIPE,
                                stderr=err, text=True)
    try:
        line = proc.stdout.readline()  # one JSON line once the attestation endpoint answers
        if not line:
            proc.wait(timeout=60)
            pytest.fail(f"run exited {proc.returncode}:\n{(project / 'run.err').read_text()[-3000:]}")
        info = json.loads(line)
        assert info["url"] == f"https://127.0.0.1:{port}"
        yield project, info["url"], proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=120)
        keep_log(demo_build / "run-serial.log", "run-serial.log")


def test_connect_in_the_project_folder_gets_the_page(served):
    project, url, _ = served
    record = json.loads((project / ".mithril/run/demo.json").read_text())
    assert record["url"] == url and "BEGIN CERTIFICATE" in record["ek_ca"]
    res = mb("connect", url + "/", cwd=project, timeout=300)
    assert res.returncode == 0, res.stderr
    assert res.stdout == (project / "appdisk/www/index.html").read_text()
    table = res.stderr
    for check in ("ak", "ak activation", "ek cert chain", "tls certificate", "PCR 15", "PCR 4", "PCR 11"):
        line = next(x for x in table.splitlines() if x.startswith(check + " "))
        assert line.split()[-1] == "ok", table


def test_measurements_of_another_app_disk_are_refused(served, demo_build: Path, tmp_path):
    project, url, _ = served
    other = tmp_path / "other"
    shutil.copytree(project, other, ignore=shutil.ignore_patterns("out", ".mithril", "run.err"))
    page = other / "appdisk/www/index.html"
    page.write_text(page.read_text() + "<!-- one changed file -->\n")
    res = mb("measurements", "--project", other, "--unlocked", "--cache-dir", project / ".mithril/cache", timeout=1800)
    assert res.returncode == 0, res.stderr
    theirs = json.loads((other / "out/demo/measurements.json").read_text())
    ours = json.loads((demo_build / "measurements.json").read_text())
    assert theirs["pcrs"]["15"] != ours["pcrs"]["15"] and theirs["pcrs"]["4"] == ours["pcrs"]["4"]
    res = mb("connect", url + "/", "--measurements", other / "out/demo/measurements.json", cwd=project, timeout=300)
    assert res.returncode == 1, res.stderr
    assert res.stdout == ""
    row = next(x for x in res.stderr.splitlines() if x.startswith("PCR 15 "))
    assert row.split()[-1] == "MISMATCH"
    assert "PCR 15" in res.stderr.splitlines()[-1]


def test_a_proxy_with_another_certificate_is_refused(served, tmp_path):
    project, url, _ = served
    proxy = TlsProxy(int(url.rsplit(":", 1)[1]), tmp_path)
    try:
        res = mb("connect", f"https://127.0.0.1:{proxy.port}/", "--measurements", project / "out/demo/measurements.json",
                 "--ek-ca", _ek_ca(project, tmp_path), cwd=project, timeout=300)
    finally:
        proxy.close()
    assert res.returncode == 1, res.stderr
    assert next(x for x in res.stderr.splitlines() if x.startswith("tls certificate ")).split()[-1] == "MISMATCH"


def _ek_ca(project: Path, tmp_path: Path) -> Path:
    path = tmp_path / "ek-ca.pem"
    path.write_text(json.loads((project / ".mithril/run/demo.json").read_text())["ek_ca"])
    return path


def test_sigterm_stops_everything(served):
    project, url, proc = served
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 0
    assert not (project / ".mithril/run/demo.json").exists()
    time.sleep(1)
    leftover = subprocess.run(["pgrep", "-f", f"hostfwd=tcp:127.0.0.1:{url.rsplit(':', 1)[1]}"],
                              capture_output=True, text=True).stdout
    assert not leftover.strip(), leftover
