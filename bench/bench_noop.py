"""Warm no-op `mithril-build all` against a bare `python3 -c pass`, measured in the same run.

    python bench/bench_noop.py PROJECT [--runs 10]

PROJECT must have been built (`mithril-build all --project PROJECT`). Prints the best and median
wall time of: `python3 -c pass`, `all` (the warm no-op, answered from file identities), and
`all --verify` (the full path: every output re-hashed), and the ratios to the bare interpreter.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path


def timed(argv: list[str]) -> float:
    start = time.perf_counter()
    res = subprocess.run(argv, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - start
    if res.returncode != 0:
        sys.exit(f"{' '.join(argv)}: exit {res.returncode}\n{res.stderr[-2000:]}")
    return elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("project", type=Path)
    ap.add_argument("--runs", type=int, default=10)
    args = ap.parse_args()
    mb = [sys.executable, "-m", "pipeline", "all", "--project", str(args.project)]
    timed(mb)  # make sure the memo of the current state exists
    cases = {"python3 -c pass": [sys.executable, "-c", "pass"], "all (warm no-op)": mb,
             "all --verify": [*mb, "--verify"]}
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(args.runs):  # interleaved, so load changes hit every case alike
        for name, argv in cases.items():
            times[name].append(timed(argv))
    base = min(times["python3 -c pass"])
    print(f"{'what':<20} {'best':>8} {'median':>8} {'best / python':>14}")
    for name, ts in times.items():
        print(f"{name:<20} {min(ts):>7.3f}s {statistics.median(ts):>7.3f}s {min(ts) / base:>13.1f}x")


if __name__ == "__main__":
    main()
