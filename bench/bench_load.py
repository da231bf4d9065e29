#!/usr/bin/env python3
"""Load on one attested server: the real serving stack of tests/stack.py (swtpm with a certified
EK, the attestation server on Debian's Python, Debian's Caddy, the static app), loopback only.

* new attested connections per second (TLS + evidence + credential activation + verification,
  every one a fresh AttestedSession) with 1, 16 and 64 concurrent clients;
* requests per second and p50/p99 latency on kept-alive connections with 1, 16 and 64 clients:
  attested (AttestedSession, attested once per connection before the clock starts) against the
  same Caddy without attestation (plain HTTPS keep-alive, certificate unchecked) and against the
  app itself with no ingress at all (plain HTTP to its port);
* what bounds attestation: the attestation server's TPM work per attestation (evidence +
  activation, in process, on a swtpm of its own), TPM2_Quote alone, and tpm2-tools' tpm2_quote as
  the reference for the quote;
* the attestation server's and Caddy's resident memory every 1,000 of 10,000 evidence requests.

Every loop is bounded (a fixed time or count). The clients share this machine's cores with the
servers: the figures are this machine's, not the servers' alone.

    python3 bench/bench_load.py [--seconds 5] [--attestations 10000] [--clients 1,16,64] [--json F]
    python3 bench/bench_load.py --url https://127.0.0.1:8443 --measurements F --ek-ca F   # a running guest
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import ssl
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mithril_client import AttestedSession  # noqa: E402
from pipeline.run import run as run_tool  # noqa: E402
from pipeline.swtpm import Swtpm, manufacture  # noqa: E402
from tests.stack import Stack  # noqa: E402


def insecure() -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    return ctx


def load(make, call, clients: int, seconds: float) -> dict:
    """`clients` threads, each with its own make() client, calling call(client) until the time is
    up; set-up (make) happens before the clock starts."""
    made = [make() for _ in range(clients)]
    latencies: list[list[float]] = [[] for _ in range(clients)]
    errors = [0] * clients
    start = threading.Barrier(clients + 1)
    deadline = [0.0]

    def worker(n: int) -> None:
        start.wait()
        while (t := time.perf_counter()) < deadline[0]:
            try:
                call(made[n])
            except Exception:  # counted, not hidden: a bench run with errors is reported as such
                errors[n] += 1
                continue
            latencies[n].append(time.perf_counter() - t)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(clients)]
    for th in threads:
        th.start()
    deadline[0] = time.perf_counter() + seconds
    t0 = time.perf_counter()
    start.wait()
    for th in threads:
        th.join()
    elapsed = time.perf_counter() - t0
    for c in made:
        close = getattr(c, "close", None)
        if close:
            close()
    lat = sorted(x for per in latencies for x in per)
    q = statistics.quantiles(lat, n=100) if len(lat) >= 2 else [lat[0] if lat else 0.0] * 99
    return {"clients": clients, "done": len(lat), "errors": sum(errors), "per_second": len(lat) / elapsed,
            "p50_ms": q[49] * 1e3, "p99_ms": q[98] * 1e3}


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def tpm_cost(work: Path, runs: int) -> dict:
    """Median ms, on a swtpm of its own: the attestation server's two TPM-bound calls in process
    (Attestor.evidence: CreatePrimary AK, Quote, PCR_Read, NV_Read of the EK certificate;
    Attestor.activate: CreatePrimary AK and EK, PolicySecret, ActivateCredential), a bare
    TPM2_Quote through the server's own TPM code, and the reference: tpm2_quote (tpm2-tools)
    minus tpm2_getrandom, i.e. the quote command without the tool's process start."""
    import base64

    from attestation_server.server import QUOTED_PCRS, Attestor, Config
    from attestation_server.tpm import AK_TEMPLATE, ALG_SHA256, RH_ENDORSEMENT, Tpm
    from mithril_client.certs import pem_bundle
    from mithril_client.credential import make_credential
    from mithril_client.tpm2 import parse_public

    manufacture(work / "tpm", work / "ca")
    tpm = Swtpm(work / "tpm", for_qemu=False).start()
    env = {"TPM2TOOLS_TCTI": tpm.tcti}

    def median_ms(fn, after=None) -> float:
        times = []
        for _ in range(runs):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
            if after:
                after()
        return statistics.median(times) * 1e3

    try:
        run_tool(["tpm2_startup", "-c"], extra_env=env)
        attestor = Attestor(Config("qemu", f"swtpm:{tpm.socket}", work / "tls", work / "state"), b"")
        doc = attestor.evidence(bytes(32))
        ek = pem_bundle(doc["ek_cert"].encode(), "ek_cert")[0].public_key()
        ak_name = parse_public(base64.b64decode(doc["ak_public"])).name
        blob, secret = make_credential(ek, ak_name, b"s" * 32)
        assert attestor.activate(blob[2:], secret[2:]) == b"s" * 32  # the TPM really did the work
        out = {"evidence (server, in process)": median_ms(lambda: attestor.evidence(os.urandom(32))),
               "activate (server, in process)": median_ms(lambda: attestor.activate(blob[2:], secret[2:]))}
        with Tpm(f"swtpm:{tpm.socket}") as t:
            ak = t.create_primary(RH_ENDORSEMENT, AK_TEMPLATE)
            out["TPM2_Quote alone (server's TPM code)"] = median_ms(
                lambda: t.quote(ak.handle, os.urandom(32), ALG_SHA256, QUOTED_PCRS))
            out["TPM2_CreatePrimary AK (server's TPM code)"] = median_ms(
                lambda: t.create_primary(RH_ENDORSEMENT, AK_TEMPLATE), lambda: t.flush_context(t._loaded[-1]))
        primary = ["tpm2_createprimary", "-C", "e", "-G", "rsa2048:rsassa-sha256:null", "-a",
                   "fixedtpm|fixedparent|sensitivedataorigin|userwithauth|restricted|sign", "-c", work / "ak.ctx"]
        run_tool(primary, extra_env=env)
        flush = lambda: run_tool(["tpm2_flushcontext", "-t"], extra_env=env)  # noqa: E731
        flush()
        pcrs = "sha256:" + ",".join(map(str, QUOTED_PCRS))
        quote = median_ms(lambda: run_tool(["tpm2_quote", "-c", work / "ak.ctx", "-l", pcrs, "-q", "00" * 32,
                                            "-m", work / "q.msg", "-s", work / "q.sig"], extra_env=env), flush)
        base = median_ms(lambda: run_tool(["tpm2_getrandom", "--hex", "8"], extra_env=env))
        out["tpm2_quote - tpm2_getrandom (tpm2-tools)"] = quote - base
        return out
    finally:
        tpm.stop()


def get(conn) -> None:
    conn.request("GET", "/")
    r = conn.getresponse()
    body = r.read()
    if r.status != 200 or not body:
        raise RuntimeError(r.status)


def clients_for(url: str, measurements, ek_ca):
    def session():
        s = AttestedSession(url, measurements, ek_ca=ek_ca)
        s.attest()
        return s

    def one_attestation(_):
        with AttestedSession(url, measurements, ek_ca=ek_ca) as s:
            s.attest()

    return session, one_attestation


def remote(args, clients: list[int]) -> None:
    """Against a running server: attested keep-alive vs plain HTTPS keep-alive to the same
    ingress, and new attested connections."""
    import urllib.parse

    u = urllib.parse.urlsplit(args.url)
    session, one_attestation = clients_for(args.url, args.measurements, args.ek_ca)
    rows = {"attested keep-alive": [load(session, lambda s: s.get("/"), n, args.seconds) for n in clients],
            "same ingress, TLS keep-alive, no attestation": [
                load(lambda: http.client.HTTPSConnection(u.hostname, u.port, context=insecure(), timeout=120), get,
                     n, args.seconds) for n in clients]}
    for name, rs in rows.items():
        for r in rs:
            print(f"{name:44} {r['clients']:3} clients  {r['per_second']:8.1f} req/s  p50 {r['p50_ms']:7.2f} ms  "
                  f"p99 {r['p99_ms']:7.2f} ms  errors {r['errors']}")
    att = [load(lambda: None, one_attestation, n, args.seconds) for n in clients]
    for r in att:
        print(f"{'new attested connections':44} {r['clients']:3} clients  {r['per_second']:8.2f} conn/s "
              f"p50 {r['p50_ms']:7.1f} ms  p99 {r['p99_ms']:7.1f} ms  errors {r['errors']}")
    if args.json:
        args.json.write_text(json.dumps({"requests": rows, "attestations": att}, indent=1))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--attestations", type=int, default=10000)
    ap.add_argument("--clients", default="1,16,64")
    ap.add_argument("--tpm-runs", type=int, default=30)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--url", help="a running server instead (e.g. `mithril-build run`): requests and new "
                                  "attested connections only")
    ap.add_argument("--measurements", type=Path)
    ap.add_argument("--ek-ca", type=Path)
    args = ap.parse_args()
    clients = [int(c) for c in args.clients.split(",")]
    if args.url:
        return remote(args, clients)
    work = Path(tempfile.mkdtemp(prefix="bench-load-"))
    stack = Stack(work).start()
    results: dict = {"cpus": os.cpu_count()}
    try:
        url, port, app_port = stack.url, stack.port, stack.app_port
        session, one_attestation = clients_for(url, stack.measurements, stack.ek_ca)

        modes = {
            "attested keep-alive (Caddy + attestation)": (session, lambda s: s.get("/")),
            "Caddy TLS keep-alive, no attestation": (
                lambda: http.client.HTTPSConnection("127.0.0.1", port, context=insecure(), timeout=60), get),
            "app alone, plain HTTP (no ingress)": (
                lambda: http.client.HTTPConnection("127.0.0.1", app_port, timeout=60), get),
        }
        results["requests"] = {name: [load(make, call, n, args.seconds) for n in clients]
                               for name, (make, call) in modes.items()}
        results["attestations"] = [load(lambda: None, one_attestation, n, args.seconds) for n in clients]

        # memory: evidence requests through Caddy on 4 kept-alive connections, RSS every 1,000
        pids = {"attestation server": stack.server.proc.pid, "caddy": stack.procs[1].pid}
        rss = [{"after": 0, **{k: rss_kib(p) for k, p in pids.items()}}]
        conns = [http.client.HTTPSConnection("127.0.0.1", port, context=insecure(), timeout=60) for _ in range(4)]
        done, lock = [0], threading.Lock()

        def evidence_worker(conn):
            while True:
                with lock:
                    if done[0] >= args.attestations:
                        return
                    done[0] += 1
                    n = done[0]
                conn.request("GET", f"/attestation?nonce={os.urandom(32).hex()}")
                r = conn.getresponse()
                r.read()
                if r.status != 200:
                    raise RuntimeError(f"evidence request {n}: HTTP {r.status}")
                if n % 1000 == 0:
                    rss.append({"after": n, **{k: rss_kib(p) for k, p in pids.items()}})

        t0 = time.perf_counter()
        ths = [threading.Thread(target=evidence_worker, args=(c,)) for c in conns]
        for th in ths:
            th.start()
        for th in ths:
            th.join()
        results["evidence_per_second"] = args.attestations / (time.perf_counter() - t0)
        results["rss_kib"] = sorted(rss, key=lambda r: r["after"])
        results["tpm_ms"] = tpm_cost(work / "ref", args.tpm_runs)
    finally:
        stack.stop()

    for name, rows in results["requests"].items():
        for r in rows:
            print(f"{name:44} {r['clients']:3} clients  {r['per_second']:8.0f} req/s  p50 {r['p50_ms']:7.2f} ms  "
                  f"p99 {r['p99_ms']:7.2f} ms  errors {r['errors']}")
    for r in results["attestations"]:
        print(f"{'new attested connections':44} {r['clients']:3} clients  {r['per_second']:8.1f} conn/s "
              f"p50 {r['p50_ms']:7.1f} ms  p99 {r['p99_ms']:7.1f} ms  errors {r['errors']}")
    print(f"evidence requests (4 keep-alive connections): {results['evidence_per_second']:.1f}/s")
    for r in results["rss_kib"]:
        print(f"  after {r['after']:6}: " + ", ".join(f"{k} {v} KiB" for k, v in r.items() if k != "after"))
    for k, v in results["tpm_ms"].items():
        print(f"{k:44} median {v:7.1f} ms")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
