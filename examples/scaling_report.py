"""Why is my parallel job as fast (or as slow) as it is? Measure it, then read the report.

    python examples/scaling_report.py [OUT.html]

Counts primes in 32 blocks of integers (pure Python, CPU-bound), with a serial step in the
caller that merges the counts, at 1 and 2 workers. fj.bench.scaling prints speedup,
efficiency, the Karp-Flatt serial fraction, an Amdahl fit with its confidence interval, where the
time went, and advice; the HTML report (plots embedded, one file) is written to OUT.html.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import forkjoin.bench as bench

BLOCK = 4_000


def count_primes(block: int) -> int:
    """Primes in [block * BLOCK, (block + 1) * BLOCK), by trial division."""
    count = 0
    for n in range(max(2, block * BLOCK), (block + 1) * BLOCK):
        if all(n % d for d in range(2, int(n**0.5) + 1)):
            count += 1
    return count


def merge(counts: list[int]) -> None:
    time.sleep(0.05)  # stands for the caller's own serial work: writing results, say


def main() -> None:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.gettempdir()) / (
        "fj-scaling-report.html"
    )
    report = bench.scaling(count_primes, range(32), [1, 2], repeats=2, after=merge)
    print(report.table())
    assert report.results_match, "parallel results differ from the serial ones"
    report.save_html(out)
    print(f"HTML report: {out}")


if __name__ == "__main__":
    main()
