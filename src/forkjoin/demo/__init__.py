"""``forkjoin demo``: real workloads on generated data, run serially and in parallel.

Each section generates its data from a fixed seed, runs the work as a plain loop and with
forkjoin, checks that both give identical results, and reports speedup, efficiency
(speedup / workers), throughput and what the pool did (tasks, chunk sizes, bytes moved).
New sections (data processing, training) are added to ``SECTIONS``.
"""

from __future__ import annotations

import importlib.util
import time
from collections.abc import Callable, Sequence
from typing import TextIO

from .data_processing import DataProcessing
from .near_duplicates import NearDuplicates
from .runner import DEFAULT_SEED, DemoContext, Section, SectionReport, Step, run_sections
from .training import Training

__all__ = [
    "DataProcessing",
    "NearDuplicates",
    "Training",
    "DEFAULT_SEED",
    "SECTIONS",
    "DemoContext",
    "Section",
    "SectionReport",
    "Step",
    "available_sections",
    "run_demo",
]


def _installed(*modules: str) -> bool:
    return all(importlib.util.find_spec(module) is not None for module in modules)


def available_sections() -> tuple[list[Section], list[str]]:
    """The sections this installation can run, and a note for each one it cannot."""
    sections: list[Section] = [NearDuplicates()]
    missing = []
    if _installed("pyarrow", "pandas"):
        sections.append(DataProcessing())
    else:
        missing.append('data processing: needs pyarrow and pandas (pip install "forkjoin[demo]")')
    if _installed("torch", "sklearn"):
        sections.append(Training())
    else:
        missing.append(
            'training: needs torch and scikit-learn (pip install "forkjoin[train]" scikit-learn)'
        )
    return sections, missing


SECTIONS, SKIPPED = available_sections()


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
    if sections is None:
        sections = SECTIONS
        for note in SKIPPED:
            print(f"(section skipped: {note})", file=out)
    return run_sections(
        sections,
        items=items,
        workers=workers,
        quick=quick,
        seed=seed,
        chunksize=chunksize,
        out=out,
        clock=clock,
    )
