"""Sections 4-5: start-up and latency (cold, warm) and the event log's cost (eventlog)."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from _harness import (
    WORKERS,
    Case,
    Clock,
    Log,
    Settings,
    check_equal,
    have_joblib,
    mp_label,
    round_robin,
    shared_pool_stats,
    shutdown_shared,
    timed,
    wait_until_ready,
)
from _report import Row, Section
from _workloads import identity

HERE = Path(__file__).resolve().parent


# -- 4a. cold start ------------------------------------------------------------------------------

COLD_CONTENDERS = {
    "forkjoin fj.map": "forkjoin_map",
    "forkjoin Pool.submit": "forkjoin_submit",
    "multiprocessing.Pool (default)": "mp_default",
    "multiprocessing.Pool (spawn)": "mp_spawn",
    "ProcessPoolExecutor (default)": "process_pool_executor",
    "joblib Parallel (loky)": "joblib_loky",
}


# Bytecode for the cold-start interpreters (and their workers). Users' imports read cached
# bytecode; an environment with PYTHONDONTWRITEBYTECODE=1 and no __pycache__ next to an editable
# install would make forkjoin alone compile its source on every cold start (the standard library
# and installed wheels come precompiled). A prefix keeps the cache out of src/.
PYCACHE = HERE / "results" / "pycache"


def cold_start_env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PYTHONPYCACHEPREFIX"] = str(PYCACHE)
    return env


def cold_start_once(contender: str) -> dict[str, float]:
    """One fresh interpreter's import and first-result times (see ``_coldstart.py``)."""
    script = HERE / "_coldstart.py"
    done = subprocess.run(
        [sys.executable, str(script), contender, str(WORKERS)],
        capture_output=True,
        text=True,
        timeout=120,
        env=cold_start_env(),
    )
    for line in done.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT ") :])
    raise RuntimeError(
        f"cold start of {contender} printed no result (exit {done.returncode}):\n"
        f"{done.stdout[-2000:]}{done.stderr[-2000:]}"
    )


def bench_cold(settings: Settings, clock: Clock, log: Log) -> Section:
    """Fresh interpreter: from just before the library's import to the first result."""
    import multiprocessing

    default_method = multiprocessing.get_start_method()
    contenders = {
        name.replace("default", default_method): script_name
        for name, script_name in COLD_CONTENDERS.items()
        if script_name != "joblib_loky" or have_joblib()
    }
    log(f"cold: {len(contenders)} contenders, 1 unmeasured + {settings.cold_repeats} rounds")
    PYCACHE.mkdir(parents=True, exist_ok=True)
    for script_name in contenders.values():
        cold_start_once(script_name)  # writes the bytecode, fills the file cache; not measured

    def case_for(script_name: str) -> Case:
        def case(clock: Clock) -> tuple[float, Any]:
            result = cold_start_once(script_name)
            return result["first_s"], result["import_s"]

        return case

    cases = {name: case_for(script_name) for name, script_name in contenders.items()}
    samples = round_robin(cases, settings.cold_repeats, clock)
    section = Section(
        key="cold",
        title=(
            "4a. cold start: fresh interpreter, import -> first result of a 1-item call "
            "(includes pool start-up)"
        ),
        unit="ms",
        higher_is_better=False,
        statistic="median",
        reference="forkjoin fj.map",
        params={"repeats": settings.cold_repeats, "pycache_prefix": str(PYCACHE)},
        notes=[
            "interpreter start-up is not counted (the same for all); bytecode is cached, as "
            "after any first run"
        ],
    )
    for name, runs in samples.items():
        first_ms = [seconds * 1000 for seconds, _ in runs]
        import_ms = [imported * 1000 for _, imported in runs]
        section.rows.append(
            Row(
                name,
                statistics.median(first_ms),
                first_ms,
                f"of which import {statistics.median(import_ms):.0f} ms; best {min(first_ms):.0f}",
                {"import_ms": import_ms},
            )
        )
    return section


# -- 4b. warm call -------------------------------------------------------------------------------


def first_result_case(
    start_call: Callable[[], Any], next_of: Callable[[Any], Any], rest: Any
) -> Case:
    """Time from the call to its first result; then drain the call, untimed."""

    def case(clock: Clock) -> tuple[float, Any]:
        start = clock()
        handle = start_call()
        first = next_of(handle)
        seconds = clock() - start
        rest(handle)
        return seconds, first

    return case


def bench_warm(settings: Settings, clock: Clock, log: Log) -> Section:
    """A second call on a warm pool: how long until its first result comes back?"""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    import forkjoin as fj

    items = list(range(settings.warm_items))
    mp_pool = multiprocessing.Pool(WORKERS)
    executor = ProcessPoolExecutor(WORKERS)
    pool = fj.Pool(WORKERS)
    try:
        n = settings.warm_items
        cases: dict[str, Case] = {
            f"forkjoin fj.imap({n} items): first": first_result_case(
                lambda: fj.imap(identity, items, workers=WORKERS), next, list
            ),
            "forkjoin fj.map([1]): whole call": timed(
                lambda: fj.map(identity, [1], workers=WORKERS)[0]
            ),
            "forkjoin Pool.submit: round trip": timed(lambda: pool.submit(identity, 0).result()),
            f"{mp_label()}.imap({n} items): first": first_result_case(
                lambda: mp_pool.imap(identity, items), next, list
            ),
            f"{mp_label()}.apply_async: round trip": timed(
                lambda: mp_pool.apply_async(identity, (0,)).get()
            ),
            f"ProcessPoolExecutor.map({n} items): first": first_result_case(
                lambda: executor.map(identity, items), next, list
            ),
            "ProcessPoolExecutor.submit: round trip": timed(
                lambda: executor.submit(identity, 0).result()
            ),
        }
        if have_joblib():
            from joblib import Parallel, delayed

            cases[f"joblib Parallel generator({n} items): first"] = first_result_case(
                lambda: Parallel(n_jobs=WORKERS, return_as="generator")(
                    delayed(identity)(x) for x in items
                ),
                next,
                list,
            )
        log(f"warm: warming pools, then {len(cases)} cases x {settings.warm_repeats} rounds")
        warm = list(range(settings.warmup_tasks))
        fj.map(identity, warm, workers=WORKERS)
        pool.submit(identity, 0).result()  # workers start on the first submit
        wait_until_ready(shared_pool_stats)
        wait_until_ready(pool.stats)
        fj.map(identity, warm, workers=WORKERS)
        list(pool.map(identity, warm))
        mp_pool.map(identity, warm, chunksize=1)
        list(executor.map(identity, warm))
        round_robin(cases, 2, clock)  # one more unmeasured warm-up of every exact path
        samples = round_robin(cases, settings.warm_repeats, clock)
    finally:
        pool.shutdown()
        executor.shutdown()
        mp_pool.terminate()
        mp_pool.join()
        shutdown_shared()

    reference = f"forkjoin fj.imap({settings.warm_items} items): first"
    section = Section(
        key="warm",
        title="4b. warm call: a second call on a warm pool -> its first result",
        unit="ms",
        higher_is_better=False,
        statistic="median",
        reference=reference,
        params={"repeats": settings.warm_repeats, "items": settings.warm_items},
    )
    for name, runs in samples.items():
        expected = 1 if "fj.map([1])" in name else 0  # first item of every other call is 0
        for _, first in runs:
            check_equal(name, first, expected)
        ms = [seconds * 1000 for seconds, _ in runs]
        p90 = statistics.quantiles(ms, n=10)[-1] if len(ms) >= 2 else ms[0]
        section.rows.append(
            Row(name, statistics.median(ms), ms, f"best {min(ms):.2f}, p90 {p90:.2f} ms")
        )
    return section


# -- 5. event log --------------------------------------------------------------------------------


def eventlog_cost(loops: int, clock: Clock) -> float:
    """Seconds per task of ``task_submitted()`` + ``task_finished()`` on a real Task."""
    from forkjoin.core.task import CallKind, FunctionRef, Status, Task
    from forkjoin.engine.events import EventLog

    task = Task(
        function=FunctionRef(identity), kind=CallKind.CALL, items=[((1,), {})], first_index=0
    )
    task.worker, task.submit_time, task.start_time, task.end_time = 0, 1.0, 1.001, 1.002
    task.bytes_sent, task.bytes_received = 60, 20
    events = EventLog()
    done = Status.DONE
    start = clock()
    for _ in range(loops):
        events.task_submitted()
        events.task_finished(task, done)
    seconds = clock() - start
    if events.stats().tasks_done != loops:
        raise AssertionError("EventLog did not record every task")
    return seconds / loops


def bench_eventlog(settings: Settings, clock: Clock, log: Log, submit: Row | None) -> Section:
    """The event log's cost per task, in isolation, against the time of one submitted task.

    ``submit`` is forkjoin's row of the submit section: its best run is set against the best
    cost here, its median against the median.
    """
    log(f"eventlog: {settings.eventlog_loops:,} tasks x {settings.eventlog_repeats}")
    eventlog_cost(10_000, clock)
    costs = [
        eventlog_cost(settings.eventlog_loops, clock) * 1e6
        for _ in range(settings.eventlog_repeats)
    ]
    detail = "per-task time unknown (run the submit section too)"
    extra: dict[str, Any] = {}
    if submit is not None:
        task_us_best = 1e6 / max(submit.runs)
        task_us_median = 1e6 / statistics.median(submit.runs)
        extra = {
            "percent_best": 100 * min(costs) / task_us_best,
            "percent_median": 100 * statistics.median(costs) / task_us_median,
            "submit_task_us_best": task_us_best,
            "submit_task_us_median": task_us_median,
        }
        detail = (
            f"{extra['percent_best']:.1f}% of a Pool.submit task ({task_us_best:.1f} us, best "
            f"runs); {extra['percent_median']:.1f}% by medians"
        )
    section = Section(
        key="eventlog",
        title="5. event log: EventLog.task_submitted() + task_finished() per task, in isolation",
        unit="us",
        higher_is_better=False,
        statistic="best",
        reference="EventLog submit+finish",
        params={"loops": settings.eventlog_loops, "repeats": settings.eventlog_repeats},
    )
    section.rows.append(Row("EventLog submit+finish", min(costs), costs, detail, extra))
    return section
