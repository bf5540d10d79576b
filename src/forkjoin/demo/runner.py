"""The demo's frame: sections that each run a real workload serially and in parallel, check that
both give the same answer, and report speedup, efficiency and what the pool did.

::

    run_sections(sections)
      │  one Pool, started once (its start-up timed on its own) and shared by every section
      ▼
    section.run(ctx) for each section:  make data -> serial -> parallel -> verify -> findings
      │                                  (ctx.timed, ctx.pool, ctx.meter, ctx.say)
      ▼
    SectionReport (steps, checks, findings, pool figures) ──> table ──> summary line

A section is any object with ``name``, ``title`` and ``run(ctx) -> SectionReport``; the list
of sections lives in ``forkjoin.demo.SECTIONS``. The clock and the output stream are injected,
so tests can run the demo silently and deterministically.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TextIO, TypeVar

import forkjoin as fj

T = TypeVar("T")

DEFAULT_SEED = 1234


@dataclass(frozen=True)
class Step:
    """One piece of work, timed serially (a plain loop) and in parallel (a forkjoin call)."""

    name: str
    items: int
    serial_seconds: float
    parallel_seconds: float
    workers: int

    @property
    def speedup(self) -> float:
        if self.parallel_seconds <= 0:
            return float("inf")
        return self.serial_seconds / self.parallel_seconds

    @property
    def efficiency(self) -> float:
        """Speedup per worker: 100% means every worker did useful work all the time."""
        return self.speedup / max(1, self.workers)

    @property
    def items_per_second(self) -> float:
        return self.items / self.parallel_seconds if self.parallel_seconds > 0 else float("inf")


@dataclass(frozen=True)
class PoolFigures:
    """What the pool did during a section's parallel steps: a difference of two snapshots of
    ``pool.stats()`` plus the chunk sizes from the pool's event log."""

    tasks: int
    items: int
    chunk_min: int
    chunk_max: int
    bytes_sent: int
    bytes_received: int
    busy_seconds: float
    wall_seconds: float
    workers: int
    retries: int
    crashes: int

    @property
    def mean_chunk(self) -> float:
        return self.items / self.tasks if self.tasks else 0.0

    @property
    def busy_fraction(self) -> float:
        """Share of the workers' wall time spent inside tasks."""
        capacity = self.wall_seconds * max(1, self.workers)
        return self.busy_seconds / capacity if capacity > 0 else 0.0


@dataclass
class SectionReport:
    name: str
    title: str
    steps: list[Step] = field(default_factory=list)
    checks: list[tuple[str, bool]] = field(default_factory=list)  # (what was compared, passed)
    findings: list[str] = field(default_factory=list)
    pool: PoolFigures | None = None

    @property
    def verified(self) -> bool:
        return bool(self.checks) and all(passed for _, passed in self.checks)


class PoolMeter:
    """Measures what a pool does between ``ctx.meter()`` and ``figures()``."""

    def __init__(self, pool: fj.Pool) -> None:
        self.pool = pool
        self.before = pool.stats()
        self.records_before = len(pool.events.task_records())

    def figures(self, wall_seconds: float) -> PoolFigures:
        after = self.pool.stats()
        chunks = [record.items for record in self.pool.events.task_records()[self.records_before :]]
        before = self.before
        return PoolFigures(
            tasks=after.tasks_done - before.tasks_done,
            items=after.items_done - before.items_done,
            chunk_min=min(chunks, default=0),
            chunk_max=max(chunks, default=0),
            bytes_sent=after.bytes_sent - before.bytes_sent,
            bytes_received=after.bytes_received - before.bytes_received,
            busy_seconds=after.busy_seconds - before.busy_seconds,
            wall_seconds=wall_seconds,
            workers=self.pool.workers,
            retries=after.tasks_retried - before.tasks_retried,
            crashes=after.worker_crashes - before.worker_crashes,
        )


class DemoContext:
    """What a section gets: the shared pool, the size of the run, a clock and the console."""

    def __init__(
        self,
        pool: fj.Pool,
        *,
        items: int | None,
        quick: bool,
        seed: int,
        out: TextIO,
        clock: Callable[[], float],
        chunksize: int | str = "auto",
    ) -> None:
        self.pool = pool
        self.workers = pool.workers
        self.chunksize = chunksize  # for the sections' parallel calls
        self.items = items
        self.quick = quick
        self.seed = seed
        self.out = out
        self.clock = clock

    def size(self, default: int, quick: int) -> int:
        """The number of items a section should use: ``--items``, else its own default."""
        if self.items is not None:
            return self.items
        return quick if self.quick else default

    def say(self, text: str = "") -> None:
        print(text, file=self.out, flush=True)

    def timed(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> tuple[T, float]:
        start = self.clock()
        value = fn(*args, **kwargs)
        return value, self.clock() - start

    def meter(self) -> PoolMeter:
        return PoolMeter(self.pool)


class Section(Protocol):
    name: str
    title: str

    def run(self, ctx: DemoContext) -> SectionReport: ...


# -- formatting ----------------------------------------------------------------------------------


def format_seconds(seconds: float) -> str:
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    return f"{seconds:.2f} s"


def format_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


def format_count(n: float) -> str:
    return f"{n:,.0f}"


def steps_table(steps: Sequence[Step]) -> list[str]:
    headers = ("step", "items", "serial", "parallel", "speedup", "efficiency", "items/s")
    rows = [
        (
            step.name,
            format_count(step.items),
            format_seconds(step.serial_seconds),
            format_seconds(step.parallel_seconds),
            f"{step.speedup:.2f}x",
            f"{step.efficiency:.0%}",
            format_count(step.items_per_second),
        )
        for step in steps
    ]
    widths = [max(len(row[i]) for row in [headers, *rows]) for i in range(len(headers))]

    def line(cells: Sequence[str]) -> str:
        first = cells[0].ljust(widths[0])
        rest = (cell.rjust(width) for cell, width in zip(cells[1:], widths[1:], strict=True))
        return "  ".join([first, *rest])

    return [line(headers), *(line(row) for row in rows)]


def pool_lines(figures: PoolFigures) -> list[str]:
    chunk = (
        f"{figures.chunk_min}"
        if figures.chunk_min == figures.chunk_max
        else f"{figures.chunk_min}-{figures.chunk_max}"
    )
    return [
        f"{figures.tasks} tasks for {format_count(figures.items)} items, chunk size {chunk} "
        f"(mean {figures.mean_chunk:.1f}), {format_bytes(figures.bytes_sent)} sent, "
        f"{format_bytes(figures.bytes_received)} received",
        f"workers busy {figures.busy_fraction:.0%} of the parallel time, "
        f"{figures.retries} retries, {figures.crashes} worker crashes",
    ]


def print_report(ctx: DemoContext, report: SectionReport) -> None:
    for description, passed in report.checks:
        ctx.say(f"    check     {'OK  ' if passed else 'FAIL'} {description}")
    for i, finding in enumerate(report.findings):
        ctx.say(f"    {'result' if i == 0 else '':9} {finding}")
    ctx.say()
    for row in steps_table(report.steps):
        ctx.say(f"    {row}")
    if report.pool is not None:
        ctx.say()
        for i, text in enumerate(pool_lines(report.pool)):
            ctx.say(f"    {'pool' if i == 0 else '':9} {text}")
    ctx.say()


# -- running -------------------------------------------------------------------------------------


def _ready(_: int) -> None:
    """A no-op task, to time how long the pool takes to give its first result."""


def run_sections(
    sections: Sequence[Section],
    *,
    items: int | None = None,
    workers: int | None = None,
    quick: bool = False,
    seed: int = DEFAULT_SEED,
    chunksize: int | str = "auto",
    out: TextIO | None = None,
    clock: Callable[[], float] = time.perf_counter,
) -> list[SectionReport]:
    """Run each section on one shared pool, printing as it goes; returns the reports."""
    out = out if out is not None else sys.stdout
    machine = fj.devices()
    workers = workers or machine.cpus
    start = clock()
    with fj.Pool(workers=workers) as pool:
        # Workers start once, here, and every section reuses them; timed apart from the work.
        pool.map_list(_ready, range(workers), chunksize=1)
        startup = clock() - start
        ctx = DemoContext(
            pool, items=items, quick=quick, seed=seed, out=out, clock=clock, chunksize=chunksize
        )
        ctx.say(
            f"forkjoin demo: {workers} worker(s) on {machine.cpus} usable CPU(s), "
            f"{pool.backend_name} backend, chunksize {chunksize}, seed {seed}"
        )
        ctx.say(f"pool start-up {format_seconds(startup)} (once; reused by every step)")
        ctx.say()
        reports = []
        for number, section in enumerate(sections, 1):
            ctx.say(f"[{number}/{len(sections)}] {section.title}")
            report = section.run(ctx)
            print_report(ctx, report)
            reports.append(report)
        ctx.say(summary(reports, workers))
    return reports


def summary(reports: Sequence[SectionReport], workers: int) -> str:
    steps = [step for report in reports for step in report.steps]
    serial = sum(step.serial_seconds for step in steps)
    parallel = sum(step.parallel_seconds for step in steps)
    overall = Step("all", sum(step.items for step in steps), serial, parallel, workers)
    failed = [report.name for report in reports if not report.verified]
    verdict = (
        "all parallel results verified against the serial ones"
        if not failed
        else f"VERIFICATION FAILED in: {', '.join(failed)}"
    )
    return (
        f"{verdict}; overall speedup {overall.speedup:.2f}x on {workers} worker(s) "
        f"(efficiency {overall.efficiency:.0%}): {format_seconds(serial)} serial -> "
        f"{format_seconds(parallel)} parallel"
    )
