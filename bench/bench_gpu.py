#!/usr/bin/env python3
"""Client-side verification of GPU evidence against NVIDIA's own verifier (nv-local-gpu-verifier
2.7.3) on the same real sample, in the same run: NVIDIA's sample H100 report, chain and RIMs
(tests/fixtures/nvidia). NVIDIA's verifier runs in its own venv (it pins cryptography 43), made
on first use at $MITHRIL_NVIDIA_VENV (default /tmp/nvidia-verifier-2.7.3) with pip from PyPI.

Timed on our side: `check_gpu` (report parse, device chain + FWID, signature, nonce, both RIMs'
XML signatures and certificate chains at 2024-06-01, golden values, mode) and a version-2
evidence document's GPU part (parse_evidence + gpu_rows). NVIDIA's side: bench/nvidia_reference.py
(its report parse, chain + FWID, nonce/version/signature, RIM schema + XML signature, golden
values; it checks no RIM chain: OpenSSL would judge it now, after the samples' expiry). Neither
side calls OCSP or the RIM service. The golden-value mismatches both find are compared too.

    python3 bench/bench_gpu.py [--runs 30]
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from mithril_client.evidence import parse_evidence  # noqa: E402
from mithril_client.gpu.check import RimSet, check_gpu, match_golden  # noqa: E402
from mithril_client.gpu.evidence import gpu_rows  # noqa: E402
from mithril_client.gpu.rim import parse_rim  # noqa: E402
from mithril_client.gpu.spdm import parse_report  # noqa: E402
from mithril_client.measurements import parse_measurements  # noqa: E402

FIX = REPO / "tests" / "fixtures" / "nvidia"
NONCE = "931d8dd0add203ac3d8b4fbde75e115278eefcdceac5b87671a748f32364dfcb"
DRIVER, VBIOS = FIX / "Driver_RIM_test_no_gpu.swidtag", FIX / "1010_0200_882_96005E0001_PROD.swidtag"
AT = datetime(2024, 6, 1, tzinfo=timezone.utc)
VENV = Path(os.environ.get("MITHRIL_NVIDIA_VENV", "/tmp/nvidia-verifier-2.7.3"))


def best(fn, runs: int) -> tuple[float, float]:
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times), statistics.median(times)


def nvidia_venv() -> Path:
    python = VENV / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", "nv-local-gpu-verifier==2.7.3"], check=True)
    return python


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=30)
    args = ap.parse_args()
    report_hex = (FIX / "hopperAttestationReport.txt").read_text()
    report, chain = bytes.fromhex(report_hex.strip()), (FIX / "hopperCertChain.txt").read_bytes()
    nonce = bytes.fromhex(NONCE)

    def ours():
        rims = RimSet((parse_rim(DRIVER.read_bytes()), parse_rim(VBIOS.read_bytes())))
        return check_gpu(report, chain, nonce, rims, now=AT)

    doc = json.dumps({"version": 2, "platform": "azure-cvm", "nonce": "00" * 32, "quote": "AAAA", "signature": "AAAA",
                      "pcrs": {"sha256": {"0": "00" * 32}}, "ak_pub": "-----BEGIN PUBLIC KEY-----", "ak_public": "AAAA",
                      "tls_ca": "-----BEGIN CERTIFICATE-----",
                      "gpus": [{"report": base64.b64encode(report).decode(), "cert_chain": chain.decode()}]})
    m = parse_measurements({"version": 1, "mode": "production", "pcrs": {"4": {"expected": ["0" * 64]}},
                            "gpu": {"driver_version": "550.90.07", "driver_rim": {
                                "id": "NV_GPU_DRIVER_GH100_550.90.07", "sha256": parse_rim(DRIVER.read_bytes()).sha256,
                                "checked_at": "2024-06-01T00:00:00Z"}}}, "m")

    def document():
        ev = parse_evidence(doc)
        rims = (parse_rim(DRIVER.read_bytes()), parse_rim(VBIOS.read_bytes()))
        return gpu_rows(ev, bytes(32), m, rims, AT)

    rows = {r.check: r.result for r in ours()}
    ours_min, ours_median = best(ours, args.runs)
    doc_min, doc_median = best(document, args.runs)
    out = subprocess.run([str(nvidia_venv()), str(REPO / "bench" / "nvidia_reference.py"), str(FIX / "hopperAttestationReport.txt"),
                          str(FIX / "hopperCertChain.txt"), NONCE, str(DRIVER), str(VBIOS), str(args.runs)],
                         capture_output=True, text=True, check=True, cwd=FIX)
    theirs = json.loads(out.stdout.strip().splitlines()[-1])
    parsed = parse_report(report)
    mine = sorted(match_golden(parsed, parse_rim(DRIVER.read_bytes()), frozenset({35}))[1]
                  + match_golden(parsed, parse_rim(VBIOS.read_bytes()), frozenset({35}))[1])
    print(f"sample: our rows {rows}")
    print(f"NVIDIA: report chain+signature ok={theirs['ok']}, golden match={theirs['golden_match']}")
    print(f"golden-value mismatches: ours {mine}; NVIDIA's {theirs['mismatching']}; same={mine == theirs['mismatching']}")
    print(f"check_gpu (ours):           min {ours_min * 1e3:7.2f} ms  median {ours_median * 1e3:7.2f} ms")
    print(f"evidence v2 GPU part (ours): min {doc_min * 1e3:7.2f} ms  median {doc_median * 1e3:7.2f} ms")
    print(f"NVIDIA verifier 2.7.3:      min {theirs['min'] * 1e3:7.2f} ms  median {theirs['median'] * 1e3:7.2f} ms")
    print(f"ratio ours/NVIDIA (min): check_gpu {ours_min / theirs['min']:.2f}x, document {doc_min / theirs['min']:.2f}x")


if __name__ == "__main__":
    main()
