"""Stress and chaos runs: a workload at high load, with faults injected at set rates, checked
item by item against a serial reference.

::

    reference  = [fn(item) for item in items]                       (serial, in the caller)
    fault-free = pool.imap(Faulty(fn, {}), enumerate(items))         timed
    faulted    = pool.imap(Faulty(fn, plan), enumerate(items))       timed, while a killer thread
                 SIGKILLs a worker every ``kill_every`` seconds and a monitor samples RSS
    check      every index seen exactly once, with the reference value or the error its fault
               calls for; after pool.shutdown(): no worker process alive, no new shared-memory
               segment mapped or open, no new /dev/shm entry

Faults, chosen per item index by a seeded RNG (``rates={"raise": 0.001, ...}``):

    kill         the worker SIGKILLs itself the first time it runs the item: retried, must succeed
    hang         sleeps past ``timeout=``: TaskTimeoutError expected (needs supports_timeout)
    raise        raises InjectedFault: TaskError expected
    unpicklable  returns an object that cannot be pickled: SerializationError expected where the
                 backend pickles results (else the object itself comes back)
    memory       allocates past ``memory_limit=``: WorkerCrashedError expected (needs
                 supports_memory_limit)

A fault kind the backend cannot survive or detect (a SIGKILL on the threads backend would kill
the caller) is skipped and listed in ``StressReport.skipped``. Every run is bounded: by
``time_limit`` seconds (then the pool is shut down and what never came back counts as lost) and
by ``max_tasks``.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from .faults import (
    FAULT_KINDS,
    HANG_FACTOR,
    WORKLOADS,
    Checker,
    Faulty,
    InjectedFault,
    Payloads,
    Unpicklable,
    checksum,
    plan_faults,
    trivial,
)
from .stress_watch import (
    Monitor,
    alive,
    is_resource_tracker,
    mapped_segments,
    marker_parent,
    shm_names,
    wait_until,
)

__all__ = [
    "FAULT_KINDS",
    "Faulty",
    "InjectedFault",
    "Payloads",
    "StressReport",
    "Unpicklable",
    "checksum",
    "plan_faults",
    "stress",
    "trivial",
]

# Upper bound on tasks a stress run accepts (1M tiny tasks is the benchmark; more only
# costs time without finding more).
MAX_TASKS = 5_000_000
# Items of the untimed warm-up before the fault-free run.
WARM_UP_TASKS = 10_000
# How long close-down may take before a leftover process or segment counts as leaked.
LEAK_GRACE_SECONDS = 5.0
# How long a run past time_limit waits for its cancelled map to wind down before giving up on it.
CANCEL_GRACE_SECONDS = 2.0


@dataclass
class StressReport:
    """What a stress run found; ``ok`` is False on any loss, duplication, wrong value,
    unexpected failure, orphan process or leaked segment."""

    backend: str
    workers: int
    tasks: int
    rates: dict[str, float]
    kill_every: float | None
    skipped: dict[str, str]
    done: int = 0
    lost: int = 0
    duplicated: int = 0
    wrong: int = 0
    unexpected_failures: int = 0
    failed_as_expected: int = 0
    injected: dict[str, int] = field(default_factory=dict)
    retried: int = 0
    workers_killed: int = 0
    worker_crashes: int = 0
    timeouts: int = 0
    workers_started: int = 0  # during the faulted run: replacements of workers that died
    engine_tasks: int = 0  # tasks the engine submitted in the faulted run (chunks, retries)
    fault_free_engine_tasks: int = 0  # the same for the fault-free run
    replacement_startup_seconds: float = 0.0  # mean start-up of the workers started meanwhile
    peak_rss_caller: int = 0
    peak_rss_workers: int = 0
    rss_samples: list[tuple[float, int]] = field(default_factory=list)
    orphans: list[int] = field(default_factory=list)
    leaked_shm: list[str] = field(default_factory=list)
    seconds: float = 0.0
    fault_free_seconds: float | None = None
    timed_out: bool = False
    examples: list[str] = field(default_factory=list)

    @property
    def slowdown(self) -> float | None:
        if not self.fault_free_seconds:
            return None
        return self.seconds / self.fault_free_seconds

    @property
    def ok(self) -> bool:
        return not (
            self.lost or self.duplicated or self.wrong or self.unexpected_failures
            or self.orphans or self.leaked_shm or self.timed_out
        )  # fmt: skip

    def as_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        out = asdict(self)
        out["slowdown"] = self.slowdown
        out["ok"] = self.ok
        return out

    def table(self) -> str:
        rows = [
            ("backend / workers", f"{self.backend} / {self.workers}"),
            ("tasks", f"{self.tasks}"),
            ("faults injected", ", ".join(f"{k}={v}" for k, v in self.injected.items()) or "-"),
            ("workers killed from outside", f"{self.workers_killed}"),
            ("done", f"{self.done}"),
            ("lost (must be 0)", f"{self.lost}"),
            ("duplicated (must be 0)", f"{self.duplicated}"),
            ("wrong values (must be 0)", f"{self.wrong}"),
            ("unexpected failures (must be 0)", f"{self.unexpected_failures}"),
            ("failed as expected", f"{self.failed_as_expected}"),
            ("retried", f"{self.retried}"),
            ("worker crashes seen", f"{self.worker_crashes}"),
            ("timeouts", f"{self.timeouts}"),
            ("workers started (replacements)", f"{self.workers_started}"),
            ("replacement start-up (mean)", f"{self.replacement_startup_seconds:.3f} s"),
            ("engine tasks (fault-free)", f"{self.engine_tasks} ({self.fault_free_engine_tasks})"),
            ("peak RSS caller", f"{self.peak_rss_caller / 2**20:.1f} MiB"),
            ("peak RSS workers (sum)", f"{self.peak_rss_workers / 2**20:.1f} MiB"),
            ("orphan processes (must be 0)", f"{len(self.orphans)}"),
            ("leaked shared memory (must be 0)", f"{len(self.leaked_shm)}"),
            ("time", f"{self.seconds:.2f} s"),
        ]
        if self.fault_free_seconds is not None:
            rows.append(("time fault-free", f"{self.fault_free_seconds:.2f} s"))
            rows.append(("slowdown", f"{self.slowdown:.2f}x"))
        if self.skipped:
            rows.append(("skipped", "; ".join(f"{k}: {v}" for k, v in self.skipped.items())))
        if self.timed_out:
            rows.append(("TIMED OUT", "the run passed time_limit; missing items count as lost"))
        rows.append(("verdict", "OK" if self.ok else "FAILED"))
        width = max(len(k) for k, _ in rows)
        lines = [f"{k.ljust(width)}  {v}" for k, v in rows]
        lines += [f"  e.g. {e}" for e in self.examples]
        return "\n".join(lines)


def _consume(
    pool: Any, wrapper: Faulty, n: int, items: Sequence[Any], options: dict[str, Any],
    checker: Checker | None, done: threading.Event,
) -> None:  # fmt: skip
    """Checks each result as it arrives (nothing is kept: the caller's memory stays flat)."""
    try:
        results = pool.imap(wrapper, zip(range(n), items), **options)  # noqa: B905
        if checker is None:
            for _ in results:
                pass
        else:
            checker.consume(results)
    except BaseException as exc:  # the run's own failure (e.g. cancelled at time_limit)
        if checker is not None:
            checker.add(("__stress_error__", exc))
    finally:
        done.set()


def _run_once(
    pool: Any, wrapper: Faulty, n: int, items: Sequence[Any], options: dict[str, Any],
    time_limit: float, checker: Checker | None,
) -> tuple[float, bool]:  # fmt: skip
    """Runs the map in a thread, so that a backend that never answers cannot hang the caller
    past ``time_limit``: then the pool is shut down. Returns (seconds, timed out)."""
    done = threading.Event()
    start = time.perf_counter()
    consumer = threading.Thread(
        target=_consume, args=(pool, wrapper, n, items, options, checker, done),
        name="fj-stress-consumer", daemon=True,
    )  # fmt: skip
    consumer.start()
    finished = done.wait(time_limit)
    seconds = time.perf_counter() - start
    if not finished:
        pool.shutdown(wait=False, cancel_futures=True)
        done.wait(CANCEL_GRACE_SECONDS)
    consumer.join(LEAK_GRACE_SECONDS if finished else 0.1)
    return seconds, not finished


def stress(
    fn: Callable[[Any], Any] | None = None,
    items: Sequence[Any] | None = None,
    *,
    workload: str = "trivial",
    tasks: int = 100_000,
    payload_size: int = 256 * 1024,
    backend: str = "process",
    workers: int = 2,
    rates: dict[str, float] | None = None,
    kill_every: float | None = None,
    timeout: float = 1.0,
    memory_limit: str | int = "256MB",
    retries: int = 5,
    chunksize: int | str = "auto",
    time_limit: float = 300.0,
    fault_free: bool = True,
    seed: int = 0,
    marker_dir: str | Path | None = None,
) -> StressReport:
    """Run ``fn`` over ``items`` (or a built-in ``workload``: "trivial" or "payload") on
    ``backend`` with faults injected at ``rates`` per item and, with ``kill_every``, a worker
    SIGKILLed from outside every that many seconds. Returns a ``StressReport``; its ``ok`` is
    False on any loss, duplication, wrong value, unexpected failure or leak."""
    import tempfile

    import forkjoin as fj

    from ..backends.base import backend_class

    if fn is None:
        if workload not in WORKLOADS:
            raise ValueError(f"unknown workload {workload!r}; choose one of {sorted(WORKLOADS)}")
        fn, items = WORKLOADS[workload](tasks, payload_size)
    if items is None:
        raise ValueError("stress(fn, items): items are needed with a function of your own")
    n = min(len(items), MAX_TASKS)
    rates = {k: float(v) for k, v in (rates or {}).items() if v}
    unknown = set(rates) - set(FAULT_KINDS)
    if unknown:
        raise ValueError(f"unknown fault kind(s) {sorted(unknown)}; choose from {FAULT_KINDS}")
    caps = backend_class(backend).capabilities
    skipped: dict[str, str] = {}
    if not caps.isolates_crashes:
        for kind in ("kill", "memory"):
            if kind in rates:
                skipped[kind] = f"the {backend!r} backend runs tasks in the caller's process"
        if kill_every:
            skipped["kill_every"] = f"the {backend!r} backend has no worker processes to kill"
            kill_every = None
    if "hang" in rates and not caps.supports_timeout:
        skipped["hang"] = f"the {backend!r} backend cannot stop a task past its timeout"
    if "memory" in rates and not caps.supports_memory_limit and "memory" not in skipped:
        skipped["memory"] = f"the {backend!r} backend cannot enforce memory_limit="
    rates = {k: v for k, v in rates.items() if k not in skipped}

    plan = plan_faults(n, rates, seed)
    from ..machine import parse_memory

    limit = parse_memory(memory_limit) if "memory" in rates else None
    pool_kwargs: dict[str, Any] = {}
    if limit is not None:
        pool_kwargs["memory_limit"] = limit
    options: dict[str, Any] = {
        "ordered": False, "on_error": "collect", "retries": retries, "chunksize": chunksize,
    }  # fmt: skip
    if "hang" in rates:
        options["timeout"] = timeout

    # the serial reference (values only: the faults are what the parallel run adds)
    reference = [fn(items[i]) for i in range(n)]
    report = StressReport(
        backend=backend, workers=workers, tasks=n, rates=rates, kill_every=kill_every,
        skipped=skipped, injected={k: list(plan.values()).count(k) for k in rates},
    )  # fmt: skip

    shm_before = shm_names()
    mapped_before = mapped_segments()

    children_before = {p.pid for p in psutil.Process().children(recursive=True)}
    markers_in = marker_parent(marker_dir)
    with tempfile.TemporaryDirectory(prefix="kill-markers-", dir=markers_in) as markers:
        wrapper = Faulty(
            fn, plan, markers, hang_seconds=timeout * HANG_FACTOR,
            memory_bytes=int((limit or 0) * 1.5) + (64 << 20),
        )  # fmt: skip
        pool = fj.Pool(workers=workers, backend=backend, **pool_kwargs)
        monitor = Monitor(pool, None, seed)
        try:
            monitor.start()
            if fault_free:
                # Warm: the workers started and the function sent, so that the first timed run
                # does not pay what the second one finds done.
                clean_options = {k: v for k, v in options.items() if k != "timeout"}
                if "timeout" in options:  # same task sizes as the faulted run
                    clean_options["chunksize"] = 1
                warm = min(n, WARM_UP_TASKS)
                _run_once(pool, Faulty(fn, {}), warm, items, clean_options, time_limit, None)
                clean_before = pool.stats().tasks_submitted
                # Checked as the faulted run is, so that both timed runs do the same work in
                # the caller (which a run of trivial tasks is bound by): unchecked, it had been
                # ~10-25% faster for that alone, which counted as the faults' cost.
                clean = StressReport(backend=backend, workers=workers, tasks=n, rates={},
                                     kill_every=None, skipped={})  # fmt: skip
                clean_checker = Checker(clean, reference, {}, n, caps.serializes)
                report.fault_free_seconds, late = _run_once(
                    pool, Faulty(fn, {}), n, items, clean_options, time_limit, clean_checker
                )
                clean_checker.finish()
                if late:
                    report.timed_out = True
                elif not clean.ok:
                    report.unexpected_failures += 1
                    report.examples.append(f"the fault-free run went wrong: {clean.examples}")
                report.fault_free_engine_tasks = pool.stats().tasks_submitted - clean_before
            if not report.timed_out:
                before = pool.stats()
                monitor.kill_every = kill_every
                checker = Checker(report, reference, plan, n, caps.serializes)
                report.seconds, report.timed_out = _run_once(
                    pool, wrapper, n, items, options, time_limit, checker
                )
                monitor.kill_every = None
                after = pool.stats()
                report.retried = after.tasks_retried - before.tasks_retried
                report.worker_crashes = after.worker_crashes - before.worker_crashes
                report.timeouts = after.timeouts - before.timeouts
                report.engine_tasks = after.tasks_submitted - before.tasks_submitted
                run_started = time.monotonic() - report.seconds
                startups = [
                    w.detail for w in pool.events.worker_records()
                    if w.event == "start" and w.time >= run_started
                ]  # fmt: skip
                if startups:
                    report.replacement_startup_seconds = sum(startups) / len(startups)
                checker.finish()
        finally:
            monitor.stop.set()
            monitor.join(5.0)
            pool.shutdown(wait=True, cancel_futures=True)
        report.workers_killed = monitor.killed
        if not report.timed_out and "before" in locals():
            report.workers_started = pool.stats().workers_started - before.workers_started
        report.peak_rss_caller = monitor.peak_caller
        report.peak_rss_workers = max(
            monitor.peak_workers,
            max((u.peak_rss for u in pool.stats().workers.values()), default=0),
        )
        report.rss_samples = monitor.samples[:: max(1, len(monitor.samples) // 50)]
        pids = set(monitor.pids) | {w.pid for w in pool.events.worker_records() if w.pid}
        pids.discard(os.getpid())

        def orphans() -> list[int]:
            mine = {
                p.pid for p in psutil.Process().children(recursive=True)
                if p.pid not in children_before and not is_resource_tracker(p)
            }  # fmt: skip
            return sorted(p for p in pids | mine if alive(p))

        wait_until(lambda: not orphans(), LEAK_GRACE_SECONDS)
        report.orphans = orphans()

        def leaked() -> list[str]:
            return sorted((shm_names() - shm_before) | (mapped_segments() - mapped_before))

        wait_until(lambda: not leaked(), LEAK_GRACE_SECONDS)
        report.leaked_shm = leaked()
    return report


