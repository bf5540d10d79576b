"""Recommendations in words, from a scaling report or one run's breakdown.

Each rule looks at one measured number and, past a threshold, says what it means and what to
change. Thresholds are named below with the trade-off they encode.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from .breakdown import Breakdown

if TYPE_CHECKING:
    from .scaling import ScalingReport

# Overhead (everything but compute, the caller's code and idle) above this share of the time is
# worth a sentence: below it, bigger chunks buy little.
OVERHEAD_WORTH_SAYING = 0.10
# A task should run at least this long so that dispatch costs (~0.1-0.5 ms a task on the process
# backend, benchmarks/bench_engine.py) stay under a few percent.
TARGET_TASK_SECONDS = 0.02
# Lanes idle more than this share: uneven tasks, too few tasks, or a caller that cannot keep up.
IDLE_WORTH_SAYING = 0.15
# Efficiency below this at some worker count: say where scaling stops paying.
LOW_EFFICIENCY = 0.6
# Serial fractions below this read as "scales almost linearly" (within measurement noise).
MIN_SERIAL_FRACTION = 0.02
# Worker start-up above this share of one run: advise reusing a Pool.
STARTUP_WORTH_SAYING = 0.10


def _pct(x: float) -> str:
    return f"{100 * x:.0f}%"


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.2f} ms" if seconds < 0.1 else f"{seconds:.2f} s"


def advise_breakdown(brk: Breakdown) -> list[str]:
    """Advice from one run's breakdown (also used for ``pool.report``)."""
    out: list[str] = []
    if brk.wall_seconds <= 0 or brk.tasks == 0:
        return out
    overhead = brk.overhead_share
    per_task = brk.mean_task_seconds
    items_per_task = brk.items / brk.tasks if brk.tasks else 1.0
    if overhead > OVERHEAD_WORTH_SAYING and per_task < TARGET_TASK_SECONDS:
        per_item = per_task / items_per_task if items_per_task else per_task
        wanted = math.ceil(TARGET_TASK_SECONDS / per_item - 1e-9) if per_item > 0 else 1000
        # no bigger than what still gives every worker a few tasks
        most = max(1, brk.items // (4 * max(1, brk.lanes)))
        text = (
            f"chunks average {_ms(per_task)} ({items_per_task:.0f} items each): overhead is "
            f"{_pct(overhead)} of the time; "
        )
        if wanted <= most:
            text += (
                f"use chunksize>={wanted} (tasks of ~{TARGET_TASK_SECONDS * 1e3:.0f} ms)"
            )
        else:
            text += (
                f"even chunksize={most} (4 tasks per worker) leaves tasks under "
                f"{TARGET_TASK_SECONDS * 1e3:.0f} ms: there is too little work per call for "
                f"parallelism to pay; batch more items per call, or run it serially"
            )
        out.append(text)
    elif overhead > OVERHEAD_WORTH_SAYING:
        biggest = max(
            ("serialisation", "transfer", "queue_wait", "merge", "startup"), key=brk.share
        )
        hint = {
            "serialisation": "pickling dominates: pass large read-only inputs once with "
            "fj.shared(...) and return smaller results",
            "transfer": "results wait to be taken up: return smaller results, or use "
            "ordered=False so one slow task does not hold the others back",
            "queue_wait": "tasks wait before they start: raise prefetch=2 on the Pool, or use "
            "fewer, larger tasks",
            "merge": "the caller's merge after the last result is slow: reduce as results "
            "arrive with fj.map_reduce",
            "startup": "worker start-up shows: keep one Pool open and reuse it",
        }[biggest]
        out.append(f"overhead is {_pct(overhead)} of the time, mostly {biggest}: {hint}")
    idle = brk.share("idle")
    if idle > IDLE_WORTH_SAYING:
        if brk.tasks < 4 * brk.lanes:
            reason = (
                f"only {brk.tasks} tasks for {brk.lanes} workers: use smaller chunks so the "
                f"work spreads evenly"
            )
        else:
            reason = (
                "tasks are uneven or the caller cannot feed the workers fast enough: try "
                "smaller chunks, ordered=False, or fewer workers"
            )
        out.append(f"workers sit idle {_pct(idle)} of the time: {reason}")
    caller = brk.share("caller")
    if caller > IDLE_WORTH_SAYING:
        out.append(
            f"the caller's own serial code takes {_pct(caller)} of the time: no worker count "
            f"speeds that part up; parallelise it or overlap it with the map"
        )
    if brk.failed_tasks:
        out.append(
            f"{brk.failed_tasks} task(s) failed or were retried: see the timeline's marks"
        )
    return out


def advise(report: ScalingReport) -> list[str]:
    """Advice from a whole scaling report, most important first."""
    out: list[str] = []
    model = report.model
    fit = model.amdahl
    points = model.points
    if fit is not None:
        f = fit.serial_fraction
        limit = fit.max_speedup()
        ci = f"95% CI {fit.ci_low:.2f}-{fit.ci_high:.2f}"
        if f >= MIN_SERIAL_FRACTION:
            # Amdahl's efficiency 1 / (f p + 1 - f) stays >= 1/2 up to p = (1 + f) / f
            enough = max(1, math.floor((1 + f) / f))
            out.append(
                f"serial fraction {f:.2f} ({ci}): speedup can never pass {limit:.1f}x; "
                f"more than {enough} workers will not help (past {enough}, each added "
                f"worker is less than half used)"
            )
        else:
            out.append(
                f"serial fraction {f:.2f} ({ci}): across the pool runs time falls almost as "
                f"1/workers; more workers should keep helping"
            )
    if points and model.serial_seconds > 0:
        best_point = max(points, key=lambda p: p.speedup)
        if best_point.speedup < 1.0:
            out.insert(
                0,
                f"parallel runs are slower than the serial loop (best {best_point.speedup:.2f}x "
                f"at {best_point.workers} workers): each item does too little work to pay for "
                f"sending it to a worker; use larger chunks or batch items, or stay serial",
            )
    kf = [(p.workers, p.karp_flatt) for p in points if p.karp_flatt is not None]
    if len(kf) >= 2 and kf[-1][1] is not None and kf[0][1] is not None:
        first, last = kf[0], kf[-1]
        assert first[1] is not None and last[1] is not None
        if last[1] - first[1] > 0.05:
            out.append(
                f"the Karp-Flatt serial fraction grows from {first[1]:.2f} at {first[0]} "
                f"workers to {last[1]:.2f} at {last[0]}: overhead grows with the worker count "
                f"(communication, contention, too few cores), not only a fixed serial part"
            )
    low = [p for p in points if p.workers > 1 and p.efficiency < LOW_EFFICIENCY]
    if points:
        best = max(points, key=lambda p: p.speedup)
        if low:
            first_low = low[0]
            out.append(
                f"efficiency falls to {_pct(first_low.efficiency)} at {first_low.workers} "
                f"workers; the best measured speedup is {best.speedup:.2f}x at "
                f"workers={best.workers}"
            )
    if report.breakdowns:
        largest = max(report.breakdowns)
        brk = report.breakdowns[largest]
        out += [f"at {largest} workers: {line}" for line in advise_breakdown(brk)]
        startup = report.startup_seconds.get(largest, 0.0)
        run = brk.wall_seconds
        if run > 0 and startup / (run + startup) > STARTUP_WORTH_SAYING:
            out.append(
                f"worker start-up ({_ms(startup)}) is {_pct(startup / (run + startup))} of a "
                f"run this size: keep one fj.Pool open across calls (fj.map does this for you)"
            )
    if report.results_match is False:
        out.append(
            "parallel results differ from the serial ones: the function depends on global "
            "state, a shared RNG or ordering; run fj.testing.assert_parallel_safe(fn, items)"
        )
    return out
