"""pipeline/debian.py's deb822 parsing and version comparison against python-debian, on the real
signed bookworm index (issue 23: would python-debian be the better choice?).

    PYTHONPATH=.:SITE_PACKAGES_WITH_python-debian python3 bench/bench_debian.py [--runs 3]

Fetches and verifies bookworm main's amd64 Packages index (as the build does), then prints the
best time of: splitting it into paragraphs (ours vs `debian.deb822.Packages.iter_paragraphs`),
and sorting every version of it (ours vs `debian.debian_support.version_compare`), and how many
neighbouring pairs the two comparisons disagree on (dpkg is the reference: tests/unit/test_debian.py).
"""

from __future__ import annotations

import argparse
import functools
import io
import tempfile
import time
from pathlib import Path

from debian import deb822, debian_support

from pipeline import debian


def best(fn, runs: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(runs):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return min(times), result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        text = debian.fetch_index("http://deb.debian.org/debian", "bookworm", Path(tmp))
    ours_t, ours = best(lambda: list(debian.parse_stanzas(text)), args.runs)
    theirs_t, theirs = best(lambda: list(deb822.Packages.iter_paragraphs(io.StringIO(text), use_apt_pkg=False)),
                            args.runs)
    same = len(ours) == len(theirs) and all(a["Package"] == b["Package"] and a["Version"] == b["Version"]
                                            and a.get("Depends", "") == b.get("Depends", "")
                                            for a, b in zip(ours, theirs))
    print(f"index: {len(text) / 1e6:.1f} MB, {len(ours)} paragraphs; same fields: {same}")
    print(f"parse   ours {ours_t:6.3f} s   python-debian {theirs_t:6.3f} s   ratio {theirs_t / ours_t:.1f}x")
    versions = sorted({s["Version"] for s in ours})
    ours_t, ours_sorted = best(lambda: sorted(versions, key=functools.cmp_to_key(debian.compare_versions)), args.runs)
    theirs_t, _ = best(lambda: sorted(versions, key=functools.cmp_to_key(debian_support.version_compare)), args.runs)
    sign = lambda n: (n > 0) - (n < 0)  # noqa: E731
    pairs = list(zip(ours_sorted, ours_sorted[1:]))
    disagree = [(a, b) for a, b in pairs
                if sign(debian.compare_versions(a, b)) != sign(debian_support.version_compare(a, b))]
    print(f"sort {len(versions)} versions   ours {ours_t:6.3f} s   python-debian {theirs_t:6.3f} s   "
          f"ratio {theirs_t / ours_t:.1f}x; neighbours disagreeing: {len(disagree)} {disagree[:5]}")


if __name__ == "__main__":
    main()
