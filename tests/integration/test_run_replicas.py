"""`mithril-build run --replicas 2`: two guests of the production demo under QEMU + OVMF + swtpm
(each its own swtpm and per-boot EK CA) behind one port with HAProxy (TCP, round-robin, TLS ends
in each guest's Caddy). Twenty `connect`s in the project folder, with no options, through the one
port: every one attested, both guests seen. Then one guest is killed, and a session that was
talking to it carries on with the other; `run` keeps serving."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

from mithril_client import AttestedSession
from tests.conftest import mb, need
from tests.integration.test_run_connect import keep_log
from tests.stack import free_port

pytestmark = pytest.mark.slow
BOOT_TIMEOUT = 3600  # two TCG guests on two shared cores: a ceiling for a stuck boot, not a speed goal
CONNECTS = 20


@pytest.fixture(scope="module")
def served(demo_build):
    need("qemu-system-x86_64", "swtpm", "swtpm_setup", "caddy", "haproxy")
    project = demo_build.parent.parent
    port = free_port()
    with open(project / "run-replicas.err", "wb") as err:
        proc = subprocess.Popen([sys.executable, "-m", "pipeline", "run", "--project", str(project), "--port",
                                 str(port), "--replicas", "2", "--timeout", str(BOOT_TIMEOUT), "--json"],
                                stdout=subprocess.PIPE, stderr=err, text=True)
    try:
        line = proc.stdout.readline()  # one JSON line once both guests answer
        if not line:
            proc.wait(timeout=60)
            pytest.fail(f"run exited {proc.returncode}:\n{(project / 'run-replicas.err').read_text()[-3000:]}")
        info = json.loads(line)
        assert info["url"] == f"https://127.0.0.1:{port}"
        yield project, info["url"], proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=120)
        for n in ("", ".2"):
            keep_log(demo_build / f"run-serial{n}.log", f"run-replicas-serial{n}.log")


def test_two_replicas_behind_one_port(served):
    project, url, proc = served
    record = json.loads((project / ".mithril/run/demo.json").read_text())
    assert record["url"] == url and len(record["guests"]) == 2
    assert record["ek_ca"] == "".join(g["ek_ca"] for g in record["guests"])
    measurements = project / "out/demo/measurements.json"
    # each guest on its own forwarded port, attested with its own EK CA only: its replica id
    ids = {}
    for g in record["guests"]:
        with AttestedSession(g["url"], measurements, ek_ca=g["ek_ca"].encode()) as s:
            s.attest()
            ids[g["pid"]] = s.replica
    assert len(set(ids.values())) == 2

    page = (project / "appdisk/www/index.html").read_text()
    seen = []
    for _ in range(CONNECTS):
        res = mb("connect", url + "/", "--json", cwd=project, timeout=300)
        assert res.returncode == 0, res.stderr
        data = json.loads(res.stdout)
        rows = {r["check"]: r["result"] for r in data["rows"]}
        assert data["attested"] and data["body"] == page
        assert rows["ak"] == rows["ak activation"] == rows["tls certificate"] == rows["PCR 15"] == "ok"
        seen.append(data["replica"])
    assert set(seen) == set(ids.values()), seen

    with AttestedSession(url, measurements, ek_ca=record["ek_ca"].encode()) as s:
        assert s.get("/").text == page
        victim = next(pid for pid, rid in ids.items() if rid == s.replica)
        survivor = next(rid for rid in ids.values() if rid != s.replica)
        os.kill(victim, signal.SIGKILL)
        for _ in range(4):  # the kept-alive connection breaks; new ones land on the survivor
            r = s.get("/")
            assert r.text == page and r.replica == survivor and s.report.ok
            s.close()
    assert proc.poll() is None  # `run` serves on with one guest
