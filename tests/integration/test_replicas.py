"""Replicas behind one address, without a VM: two serving stacks (tests/stack.py: each its own
swtpm with its own EK CA, attestation server, Caddy, app) behind Debian's HAProxy as
`mithril-build run --replicas` configures it (TCP, round-robin, TLS ends in each stack).

Which replica answered is checked against `openssl x509 -fingerprint -sha256` of each stack's CA
file, not against our own code. The refusals: a replica that is a TLS-terminating proxy in front
of a genuine one is refused on every connection that lands there, while the honest one serves.
"""

from __future__ import annotations

import json
import subprocess

import pytest

from mithril_client import AttestationFailed, AttestedSession
from pipeline.platforms.qemu.balancer import Balancer
from tests.conftest import mb, need
from tests.stack import PAGE, Stack, TlsProxy, free_port, need_stack

CONNECTS = 20


def openssl_fingerprint(pem) -> str:
    out = subprocess.run(["openssl", "x509", "-noout", "-fingerprint", "-sha256", "-in", str(pem)],
                         capture_output=True, text=True, check=True).stdout
    return "sha256:" + out.strip().split("=", 1)[1].replace(":", "").lower()


@pytest.fixture(scope="module")
def replicas(tmp_path_factory):
    need_stack()
    need("haproxy", "openssl")
    stacks = [Stack(tmp_path_factory.mktemp(f"replica{i}")) for i in (1, 2)]
    balancer = None
    try:
        for s in stacks:
            s.start()
        # two fresh TPMs with the same extends: one measurements.json fits both (a fact, checked)
        assert stacks[0].pcrs == stacks[1].pcrs
        work = tmp_path_factory.mktemp("balancer")
        (work / "ek-cas.pem").write_bytes(b"".join(s.ek_ca for s in stacks))
        balancer = Balancer(free_port(), [s.port for s in stacks], work)
        yield stacks, balancer, work
    finally:
        if balancer is not None:
            balancer.stop()
        for s in stacks:
            s.stop()


def test_twenty_connects_through_one_port_see_both_replicas_each_attested(replicas):
    stacks, balancer, work = replicas
    fingerprints = {openssl_fingerprint(s.work / "tls/ca.pem") for s in stacks}
    assert len(fingerprints) == 2
    seen = []
    for _ in range(CONNECTS):
        res = mb("connect", f"https://127.0.0.1:{balancer.port}/", "--measurements", stacks[0].measurements,
                 "--ek-ca", work / "ek-cas.pem", "--json", timeout=300)
        assert res.returncode == 0, res.stderr
        data = json.loads(res.stdout)
        rows = {r["check"]: r["result"] for r in data["rows"]}
        assert data["attested"] and data["body"].encode() == PAGE
        assert rows["ak"] == rows["tls certificate"] == rows["PCR 15"] == rows["ek cert chain"] == "ok"
        seen.append(data["replica"])
    assert set(seen) == fingerprints  # round-robin: both answered, nobody else did
    # the table names the replica too
    res = mb("connect", f"https://127.0.0.1:{balancer.port}/", "--measurements", stacks[0].measurements,
             "--ek-ca", work / "ek-cas.pem", timeout=300)
    assert res.returncode == 0 and any(line.split()[0] == "replica" for line in res.stderr.splitlines()[1:])
    assert any(f"replica {f}" in res.stderr for f in fingerprints), res.stderr


def test_one_ek_ca_alone_is_refused_on_the_other_replica(replicas):
    stacks, balancer, _ = replicas
    results = [mb("connect", f"https://127.0.0.1:{balancer.port}/", "--measurements", stacks[0].measurements,
                  "--ek-ca", stacks[0].work / "ek-ca.pem", "--json", timeout=300).returncode for _ in range(4)]
    assert sorted(set(results)) == [0, 1], results


def test_a_session_spans_replicas_and_survives_losing_one(replicas):
    stacks, balancer, work = replicas
    with AttestedSession(f"https://127.0.0.1:{balancer.port}", stacks[0].measurements,
                         ek_ca=work / "ek-cas.pem") as s:
        seen = set()
        for _ in range(4):
            r = s.get("/")
            assert r.body == PAGE and r.replica == s.replica
            seen.add(r.replica)
            s.close()  # the next request opens (and attests) a new connection
        assert len(seen) == 2
        r = s.get("/")  # a kept-alive connection to one replica, which now goes away
        gone = next(st for st in stacks if openssl_fingerprint(st.work / "tls/ca.pem") == r.replica)
        gone.stop()
        for _ in range(4):  # the idle connection breaks, a new one lands on the survivor
            r = s.get("/")
            assert r.body == PAGE and r.replica != openssl_fingerprint(gone.work / "tls/ca.pem")
            assert s.report.ok
            s.close()


def test_a_proxy_posing_as_a_replica_is_refused_while_the_honest_one_serves(tmp_path_factory, tmp_path):
    need_stack()
    need("haproxy")
    honest = Stack(tmp_path_factory.mktemp("honest"))
    proxy = balancer = None
    try:
        honest.start()
        proxy = TlsProxy(honest.port, tmp_path)  # genuine evidence relayed, its own certificate
        balancer = Balancer(free_port(), [honest.port, proxy.port], tmp_path / "lb")
        refused = served = 0
        with AttestedSession(f"https://127.0.0.1:{balancer.port}", honest.measurements, ek_ca=honest.ek_ca) as s:
            for _ in range(6):
                try:
                    assert s.get("/").body == PAGE
                    served += 1
                except AttestationFailed as e:
                    assert {r.check for r in e.report.all_rows if r.failed} == {"tls certificate"}
                    refused += 1
                s.close()
        assert served and refused
    finally:
        if balancer is not None:
            balancer.stop()
        if proxy is not None:
            proxy.close()
        honest.stop()
