#!/usr/bin/env python3
"""Client-side verification of one evidence document against `tpm2_checkquote` on the same quote,
in the same run, and the attestation round trip (TLS + evidence + credential activation + verify).

The evidence comes from the real serving stack (tests/stack.py: swtpm with a certified EK, the
attestation server, Caddy). With --url (and --measurements, --ek-ca) the round trip is also timed
against a running `mithril-build run` guest (QEMU, TCG here).

    python3 bench/bench_attest.py [--runs 20] [--url https://127.0.0.1:8443 --measurements F --ek-ca F]
"""

from __future__ import annotations

import argparse
import base64
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mithril_client import AttestedSession  # noqa: E402
from mithril_client.evidence import parse_evidence  # noqa: E402
from mithril_client.measurements import load_measurements  # noqa: E402
from mithril_client.verify import Trust, verify_evidence  # noqa: E402
from tests.integration.test_attestation_server import tpm2_tools_pcr_file  # noqa: E402
from tests.integration.test_connect import fetch_evidence  # noqa: E402
from tests.stack import Stack  # noqa: E402

NONCE = bytes(range(32))


def best(fn, runs: int) -> tuple[float, float]:
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times), statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--url")
    ap.add_argument("--measurements", type=Path)
    ap.add_argument("--ek-ca", type=Path)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-attest-"))
    stack = Stack(work).start()
    try:
        raw = fetch_evidence(stack, NONCE)
        doc = json.loads(raw)
        (work / "evidence.json").write_bytes(raw)
        (work / "quote.msg").write_bytes(base64.b64decode(doc["quote"]))
        (work / "quote.sig").write_bytes(base64.b64decode(doc["signature"]))
        (work / "ak.pem").write_text(doc["ak_pub"])
        values = [bytes.fromhex(doc["pcrs"]["sha256"][str(i)]) for i in range(16)]
        (work / "quote.pcrs").write_bytes(tpm2_tools_pcr_file(values))
        m = load_measurements(stack.measurements)
        trust = Trust(ek_roots=stack.ek_ca)

        def ours_in_process():
            verify_evidence(parse_evidence(raw), NONCE, m, trust, raise_on_failure=False)  # no activation: offline work only

        checkquote = ["tpm2_checkquote", "-u", work / "ak.pem", "-m", work / "quote.msg", "-s", work / "quote.sig",
                      "-f", work / "quote.pcrs", "-g", "sha256", "-q", NONCE.hex()]
        cli = [sys.executable, "-m", "pipeline", "attest", "verify", "--evidence", work / "evidence.json", "--nonce",
               NONCE.hex(), "--measurements", stack.measurements, "--ek-ca", work / "ek-ca.pem", "--json"]
        subprocess.run(checkquote, check=True, capture_output=True)
        ref = best(lambda: subprocess.run(checkquote, check=True, capture_output=True), args.runs)
        lib = best(ours_in_process, args.runs)
        proc = best(lambda: subprocess.run(cli, capture_output=True), max(3, args.runs // 4))
        print(f"tpm2_checkquote (process)            best {ref[0] * 1e3:8.1f} ms  median {ref[1] * 1e3:8.1f} ms")
        print(f"verify_evidence (library, in process) best {lib[0] * 1e3:8.1f} ms  median {lib[1] * 1e3:8.1f} ms"
              f"  ratio {lib[0] / ref[0]:.2f}x")
        print(f"attest verify --evidence (process)   best {proc[0] * 1e3:8.1f} ms  median {proc[1] * 1e3:8.1f} ms"
              f"  ratio {proc[0] / ref[0]:.2f}x")

        def round_trip(url, measurements, ek_ca):
            with AttestedSession(url, measurements, ek_ca=ek_ca) as s:
                s.attest()

        local = best(lambda: round_trip(stack.url, stack.measurements, stack.ek_ca), max(3, args.runs // 4))
        print(f"round trip, local stack (TLS, evidence, activation, verify) best {local[0] * 1e3:.1f} ms "
              f"median {local[1] * 1e3:.1f} ms")
        if args.url:
            guest = best(lambda: round_trip(args.url, args.measurements, args.ek_ca.read_bytes()), max(3, args.runs // 4))
            print(f"round trip, {args.url} best {guest[0] * 1e3:.1f} ms median {guest[1] * 1e3:.1f} ms")
    finally:
        stack.stop()


if __name__ == "__main__":
    main()
