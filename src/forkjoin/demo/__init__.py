"""``forkjoin demo``: real workloads on generated data, run serially and in parallel.

Each section generates its data from a fixed seed, runs the work as a plain loop and with
forkjoin, checks that both give identical results, and reports speedup, efficiency
(speedup / workers), throughput and what the pool did (tasks, chunk sizes, bytes moved).
New sections (data processing, training) are added to ``SECTIONS``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import TextIO

from .near_duplicates import NearDuplicates
from .runner import DEFAULT_SEED, DemoContext, Section, SectionReport, Step, run_sections

__all__ = [
    "DEFAULT_SEED",
    "SECTIONS",
    "DemoContext",
    "Section",
    "SectionReport",
    "Step",
    "run_demo",
]

SECTIONS: list[Section] = [NearDuplicates()]


def run_demo(
    *,
    items: int | None = None,
    workers: int | None = None,
    quick: bool = False,
    seed: int = DEFAULT_SEED,
    chunksize: int | str = "auto",
    sections: Sequence[Section] | None = None,
    out: TextIO | None = None,
    clock: Callable[[], float] = time.perf_counter,
) -> list[SectionReport]:
    """Run the demo sections (all by default), printing to ``out``; returns their reports.

    ``items`` overrides each section's size, ``quick`` picks the small sizes (~2 s in all),
    ``workers`` defaults to every usable CPU; ``chunksize`` is passed to the parallel calls.
    """
    return run_sections(
        SECTIONS if sections is None else sections,
        items=items,
        workers=workers,
        quick=quick,
        seed=seed,
        chunksize=chunksize,
        out=out,
        clock=clock,
    )
