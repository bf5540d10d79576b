"""``scaling``: run one job at several worker counts (plus serially) and explain the numbers.

::

    serial baseline  (before(); [fn(x) for x in items]; after(results))  x repeats
    for p in workers:  Pool(p) started and warmed up (start-up measured, not counted)
        before(); pool.map_list(fn, items); after(results)   x repeats  -> T(p), event window
    model: speedup, efficiency, Karp-Flatt, Amdahl fit + CI, Gustafson, predictions (model.py)
    breakdown of the median repeat at each p, from the pool's event log (breakdown.py)
    advice in words (advice.py); table, JSON, PNG and HTML (render.py)

``before`` and ``after`` are the caller's own serial phases (loading, reducing): they are timed
with the job, as a user's program would pay them.
"""

from __future__ import annotations

import pickle
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from statistics import median
from typing import Any

from .breakdown import Breakdown, compute_breakdown
from .model import ScalingModel, build_model

# Items pickled to estimate the serialisation cost per item (enough for a stable mean, cheap).
SERIALISATION_SAMPLE = 256
# How long scaling waits for a fresh pool's workers to be ready before measuring anyway.
WARMUP_TIMEOUT_SECONDS = 60.0


def _warm(x: int) -> int:
    return x


@dataclass
class ScalingReport:
    """Everything ``scaling`` measured and concluded; render it with ``table()``, ``to_json``,
    ``save_plots`` or ``save_html``."""

    function: str
    backend: str
    items: int
    workers: list[int]
    repeats: int
    serial_times: list[float]
    model: ScalingModel
    breakdowns: dict[int, Breakdown]
    startup_seconds: dict[int, float]
    serialisation_seconds_per_item: float
    results_match: bool | None
    advice: list[str] = field(default_factory=list)

    @property
    def serial_fraction(self) -> float | None:
        return self.model.amdahl.serial_fraction if self.model.amdahl else None

    def as_dict(self) -> dict[str, Any]:
        from .render import report_dict

        return report_dict(self)

    def to_json(self, path: str | Path | None = None) -> str:
        import json

        text = json.dumps(self.as_dict(), indent=2, default=float)
        if path is not None:
            Path(path).write_text(text)
        return text

    def table(self, width: int = 100) -> str:
        from .render import render_table

        return render_table(self, width=width)

    def save_plots(self, directory: str | Path) -> list[Path]:
        from .render import save_scaling_plots

        return save_scaling_plots(self, Path(directory))

    def save_html(self, path: str | Path, profile: Any = None) -> Path:
        """The report as one self-contained page; with a ``profile`` (forkjoin.observe) it
        ends with the workers' top functions and a flame graph."""
        from .render import write_scaling_html

        extra = None
        if profile is not None:
            from ..observe.flamegraph import profile_html
            from .render import _table

            extra = profile_html(profile, _table)
        return write_scaling_html(self, Path(path), extra)

    def __str__(self) -> str:
        return self.table()


def _call_name(fn: Callable[..., Any]) -> str:
    module = getattr(fn, "__module__", "") or ""
    name = getattr(fn, "__qualname__", repr(fn))
    return f"{module}:{name}" if module else name


def _serialisation_cost(items: list[Any], results: list[Any] | None) -> float:
    """Seconds per item to pickle an item and unpickle its result (a sample, by chunks)."""
    sample = items[:SERIALISATION_SAMPLE]
    if not sample:
        return 0.0
    outs = (results or [])[:SERIALISATION_SAMPLE]
    try:
        start = time.perf_counter()
        blob = pickle.dumps(sample, protocol=pickle.HIGHEST_PROTOCOL)
        pickle.loads(blob)  # noqa: S301  (our own bytes)
        if outs:
            back = pickle.dumps(outs, protocol=pickle.HIGHEST_PROTOCOL)
            pickle.loads(back)  # noqa: S301
        return (time.perf_counter() - start) / len(sample)
    except Exception:  # unpicklable items: the backend will say so; no estimate here
        return 0.0


def _ready_workers(pool: Any) -> int:
    return sum(1 for usage in pool.stats().workers.values() if usage.alive and usage.pid)


def _warm_up(pool: Any, workers: int, fn: Callable[[Any], Any] | None, data: list[Any]) -> None:
    """Start every worker, then run ``fn`` on a few items so that importing its module (which
    a worker does on first use) is not charged to the first measured run."""
    pool.map_list(_warm, range(workers * 2), chunksize=1)
    deadline = time.monotonic() + WARMUP_TIMEOUT_SECONDS
    while _ready_workers(pool) < min(workers, pool.workers) and time.monotonic() < deadline:
        time.sleep(0.01)
    if fn is not None and data:
        pool.map_list(fn, data[: workers * 2], chunksize=1)


def _equal(a: Any, b: Any) -> bool:
    try:
        return bool(a == b)
    except Exception:  # arrays and other types whose == is not a bool
        try:
            return pickle.dumps(a) == pickle.dumps(b)
        except Exception:
            return False


def scaling(
    fn: Callable[[Any], Any],
    items: Iterable[Any],
    workers: Sequence[int] = (1, 2, 4),
    *,
    backend: str = "process",
    repeats: int = 3,
    chunksize: int | str = "auto",
    before: Callable[[], Any] | None = None,
    after: Callable[[list[Any]], Any] | None = None,
    initializer: Callable[..., Any] | None = None,
    initargs: tuple[Any, ...] = (),
    serial: bool = True,
    check: bool = True,
    warmup: bool = True,
    predict_at: Sequence[int] | None = None,
    pool_options: dict[str, Any] | None = None,
    map_options: dict[str, Any] | None = None,
) -> ScalingReport:
    """Run ``fn`` over ``items`` serially and at each worker count; measure and explain.

    ``backend`` is any registered backend name. ``before()`` and ``after(results)`` are the
    caller's serial phases, timed with the job. ``initializer(*initargs)`` runs in each worker
    (and once in the caller for the serial baseline). ``check`` compares parallel results with
    the serial ones. ``warmup`` runs ``fn`` on a few items in each fresh pool before timing
    (workers import the function's module on first use). Returns a ``ScalingReport``.
    """
    import forkjoin as fj

    from .advice import advise

    data = list(items)
    counts = sorted({int(p) for p in workers})
    if not counts or counts[0] < 1:
        raise ValueError(f"workers must be positive integers, got {list(workers)!r}")
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats!r}")
    map_opts = dict(map_options or {})
    map_opts["chunksize"] = chunksize

    serial_times: list[float] = []
    reference: list[Any] | None = None
    if serial:
        if initializer is not None:
            initializer(*initargs)
        for _ in range(repeats):
            start = time.perf_counter()
            if before is not None:
                before()
            reference = [fn(x) for x in data]
            if after is not None:
                after(reference)
            serial_times.append(time.perf_counter() - start)
    per_item = _serialisation_cost(data, reference)

    times: dict[int, list[float]] = {}
    breakdowns: dict[int, Breakdown] = {}
    startup: dict[int, float] = {}
    matches: list[bool] = []
    for p in counts:
        with fj.Pool(
            workers=p,
            backend=backend,
            initializer=initializer,
            initargs=initargs,
            **(pool_options or {}),
        ) as pool:
            _warm_up(pool, p, fn if warmup else None, data)
            starts = [w.detail for w in pool.events.worker_records() if w.event == "start"]
            startup[p] = sum(starts) / len(starts) if starts else 0.0
            runs: list[tuple[float, Breakdown]] = []
            for _ in range(repeats):
                wall_start = time.perf_counter()
                t0 = time.monotonic()
                caller: list[tuple[float, float]] = []
                if before is not None:
                    before()
                    caller.append((t0, time.monotonic()))
                results = pool.map_list(fn, data, **map_opts)
                last_merge = time.monotonic()
                if after is not None:
                    after(results)
                    caller.append((last_merge, time.monotonic()))
                t1 = time.monotonic()
                wall = time.perf_counter() - wall_start
                if check and reference is not None:
                    matches.append(
                        len(results) == len(reference)
                        and all(_equal(a, b) for a, b in zip(results, reference, strict=True))
                    )
                brk = compute_breakdown(
                    pool.events.task_records(),
                    pool.events.worker_records(),
                    workers=pool.workers,
                    t0=t0,
                    t1=t1,
                    caller_intervals=caller,
                    last_merge=last_merge,
                    serialisation_seconds_per_item=per_item,
                )
                brk.measured_seconds = wall
                runs.append((wall, brk))
            times[p] = [wall for wall, _ in runs]
            middle = median(times[p])
            breakdowns[p] = min(runs, key=lambda run: abs(run[0] - middle))[1]

    model = build_model(serial_times, times, list(predict_at) if predict_at else None)
    report = ScalingReport(
        function=_call_name(fn),
        backend=backend,
        items=len(data),
        workers=counts,
        repeats=repeats,
        serial_times=serial_times,
        model=model,
        breakdowns=breakdowns,
        startup_seconds=startup,
        serialisation_seconds_per_item=per_item,
        results_match=all(matches) if matches else None,
    )
    report.advice = advise(report)
    return report
