"""Sections 1-3: throughput of trivial tasks (submit, map) and CPU-bound efficiency (cpu).

Each section starts its pools, warms them, measures round-robin and shuts everything down.
"""

from __future__ import annotations

import functools
import statistics
from collections.abc import Callable
from typing import Any

from _harness import (
    WORKERS,
    Case,
    Clock,
    Log,
    Settings,
    apply_async_and_gather,
    calibrate_spin,
    check_equal,
    have_joblib,
    mp_label,
    round_robin,
    shared_pool_stats,
    shutdown_shared,
    submit_and_gather,
    timed,
    wait_until_ready,
)
from _report import Row, Section
from _workloads import identity, spin

# -- 1. submit -----------------------------------------------------------------------------------


def bench_submit(settings: Settings, clock: Clock, log: Log) -> Section:
    """Many trivial calls, each its own task: submit them all, then gather every result."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    import forkjoin as fj

    n = settings.submit_tasks
    expected = list(range(n))
    mp_pool = multiprocessing.Pool(WORKERS)  # first: fork before the other pools start threads
    executor = ProcessPoolExecutor(WORKERS)
    pool = fj.Pool(WORKERS)
    try:

        run_forkjoin = functools.partial(submit_and_gather, pool.submit, identity)
        run_mp = functools.partial(apply_async_and_gather, mp_pool, identity)
        run_executor = functools.partial(submit_and_gather, executor.submit, identity)

        def run_joblib(count: int) -> list[Any]:
            from joblib import Parallel, delayed

            return Parallel(n_jobs=WORKERS, batch_size=1)(
                delayed(identity)(i) for i in range(count)
            )

        runners: dict[str, Callable[[int], list[Any]]] = {
            "forkjoin Pool.submit": run_forkjoin,
            f"{mp_label()}.apply_async": run_mp,
            "ProcessPoolExecutor.submit": run_executor,
        }
        if have_joblib():
            runners["joblib delayed (batch_size=1)"] = run_joblib
        log(f"submit: warming {len(runners)} pools")
        for name, run in runners.items():
            check_equal(name, run(settings.warmup_tasks), list(range(settings.warmup_tasks)))
        wait_until_ready(pool.stats)  # workers start on the first submit, not with the pool
        run_forkjoin(settings.warmup_tasks)  # now every worker has the function too
        repeats = {
            name: settings.submit_repeats if i < 2 else settings.submit_slow_repeats
            for i, name in enumerate(runners)
        }
        log(f"submit: {n} tasks x {max(repeats.values())} rounds")
        cases = {name: timed(functools.partial(run, n)) for name, run in runners.items()}
        samples = round_robin(cases, repeats, clock)
    finally:
        pool.shutdown()
        executor.shutdown()
        mp_pool.terminate()
        mp_pool.join()
        shutdown_shared()

    section = Section(
        key="submit",
        title=f"1. submit {n:,} trivial tasks, then gather (warm pools, {WORKERS} workers)",
        unit="tasks/s",
        higher_is_better=True,
        statistic="best",
        reference="forkjoin Pool.submit",
        params={"tasks": n, "repeats": repeats},
    )
    for name, runs in samples.items():
        for _, value in runs:
            check_equal(name, value, expected)
        rates = [n / seconds for seconds, _ in runs]
        per_task_us = 1e6 / max(rates)
        section.rows.append(
            Row(
                name,
                max(rates),
                rates,
                f"{per_task_us:.0f} us/task; median {statistics.median(rates):,.0f}/s",
                {"seconds": [seconds for seconds, _ in runs], "per_task_us": per_task_us},
            )
        )
    return section


def executor_map(executor: Any, items: list[Any], chunksize: int) -> list[Any]:
    return list(executor.map(identity, items, chunksize=chunksize))


# -- 2. map --------------------------------------------------------------------------------------


def bench_map(settings: Settings, clock: Clock, log: Log) -> Section:
    """A map of many trivial items: forkjoin's auto chunking against each peer's best chunksize.

    Each peer's best chunksize is the one with the best *median* time, and its figure is then the
    best run at that chunksize, like everyone else's: picking the single fastest of 25 runs would
    reward luck, not the chunksize.
    """
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    import forkjoin as fj

    n = settings.map_items
    items = list(range(n))
    mp_pool = multiprocessing.Pool(WORKERS)
    executor = ProcessPoolExecutor(WORKERS)
    mp_name = f"{mp_label()}.map"
    try:
        cases: dict[str, Case] = {
            "serial loop": timed(lambda: [identity(x) for x in items]),
            "forkjoin fj.map (auto)": timed(lambda: fj.map(identity, items, workers=WORKERS)),
        }
        groups: dict[str, dict[int, str]] = {"forkjoin fj.map": {}, mp_name: {}}
        groups["ProcessPoolExecutor.map"] = {}
        for size in settings.chunksizes:
            key = f"forkjoin fj.map chunksize={size}"
            groups["forkjoin fj.map"][size] = key
            cases[key] = timed(
                functools.partial(fj.map, identity, items, workers=WORKERS, chunksize=size)
            )
            key = f"{mp_name} chunksize={size}"
            groups[mp_name][size] = key
            cases[key] = timed(functools.partial(mp_pool.map, identity, items, chunksize=size))
            key = f"ProcessPoolExecutor.map chunksize={size}"
            groups["ProcessPoolExecutor.map"][size] = key
            cases[key] = timed(functools.partial(executor_map, executor, items, size))
        if have_joblib():
            from joblib import Parallel, delayed

            cases["joblib Parallel (auto batch)"] = timed(
                lambda: Parallel(n_jobs=WORKERS)(delayed(identity)(x) for x in items)
            )
        log("map: warming pools")
        warm = list(range(settings.warmup_tasks))
        check_equal("forkjoin", fj.map(identity, warm, workers=WORKERS), warm)
        wait_until_ready(shared_pool_stats)
        check_equal("forkjoin", fj.map(identity, warm, workers=WORKERS), warm)  # ships fn to all
        check_equal("mp", mp_pool.map(identity, warm, chunksize=1), warm)
        check_equal("executor", list(executor.map(identity, warm)), warm)
        if have_joblib():
            from joblib import Parallel, delayed

            check_equal(
                "joblib", Parallel(n_jobs=WORKERS)(delayed(identity)(x) for x in warm), warm
            )
        repeats = dict.fromkeys(cases, settings.map_repeats)
        if "joblib Parallel (auto batch)" in cases:
            repeats["joblib Parallel (auto batch)"] = settings.map_slow_repeats
        log(f"map: {n:,} items, {len(cases)} cases x {settings.map_repeats} rounds")
        samples = round_robin(cases, repeats, clock)
    finally:
        executor.shutdown()
        mp_pool.terminate()
        mp_pool.join()
        shutdown_shared()

    for name, runs in samples.items():
        for _, value in runs:
            check_equal(name, value, items)

    def rates(name: str) -> list[float]:
        return [n / seconds for seconds, _ in samples[name]]

    section = Section(
        key="map",
        title=f"2. map {n:,} trivial items (warm pools, {WORKERS} workers)",
        unit="items/s",
        higher_is_better=True,
        statistic="best",
        reference="forkjoin fj.map (auto)",
        params={"items": n, "repeats": repeats, "chunksizes": settings.chunksizes},
        notes=[
            "a peer's best chunksize is the one with the best median; its figure is the best run "
            "at that chunksize"
        ],
    )

    def plain_row(name: str) -> Row:
        r = rates(name)
        return Row(name, max(r), r, f"median {statistics.median(r):,.0f}/s")

    section.rows.append(plain_row("forkjoin fj.map (auto)"))
    for group, by_size in groups.items():
        medians = {size: statistics.median(rates(key)) for size, key in by_size.items()}
        chosen = max(medians, key=lambda size: medians[size])
        r = rates(by_size[chosen])
        sweep = {size: round(m) for size, m in medians.items()}
        label = f"{group} (best chunksize)"
        section.rows.append(
            Row(
                label,
                max(r),
                r,
                f"chunksize={chosen}; median {medians[chosen]:,.0f}/s",
                {"chunksize": chosen, "median_by_chunksize": sweep},
            )
        )
    if "joblib Parallel (auto batch)" in samples:
        section.rows.append(plain_row("joblib Parallel (auto batch)"))
    section.rows.append(plain_row("serial loop"))  # the baseline: is parallel worth it at all?
    return section


# -- 3. cpu --------------------------------------------------------------------------------------


def bench_cpu(settings: Settings, clock: Clock, log: Log) -> Section:
    """CPU-bound tasks: does every worker compute all the time, or wait on the library?

    busy = sum of compute time measured inside the tasks / (workers x wall time). It needs no
    serial run to compare with, so load elsewhere on the machine (which slows the tasks and the
    wall clock alike) does not move it; the serial-based figure is in the detail column.
    """
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    import forkjoin as fj

    steps = calibrate_spin(settings.cpu_task_seconds)
    tasks = [steps] * settings.cpu_tasks
    log(f"cpu: {settings.cpu_tasks} tasks of {steps:,} steps (~{settings.cpu_task_seconds} s)")
    mp_pool = multiprocessing.Pool(WORKERS)
    executor = ProcessPoolExecutor(WORKERS)
    try:
        cases: dict[str, Case] = {
            "forkjoin fj.map": timed(lambda: fj.map(spin, tasks, workers=WORKERS)),
            f"{mp_label()}.map": timed(lambda: mp_pool.map(spin, tasks)),
            "ProcessPoolExecutor.map": timed(lambda: list(executor.map(spin, tasks))),
        }
        if have_joblib():
            from joblib import Parallel, delayed

            cases["joblib Parallel"] = timed(
                lambda: Parallel(n_jobs=WORKERS)(delayed(spin)(s) for s in tasks)
            )
        cases["serial loop"] = timed(lambda: [spin(s) for s in tasks])
        # Warm with tiny tasks: starts the workers and ships the function, and leaves forkjoin's
        # measured task duration at a short-task value, as after any earlier small job.
        warm = [1_000] * settings.warmup_tasks
        fj.map(spin, warm, workers=WORKERS)
        wait_until_ready(shared_pool_stats)
        fj.map(spin, warm, workers=WORKERS)
        mp_pool.map(spin, warm)
        list(executor.map(spin, warm))
        if have_joblib():
            from joblib import Parallel, delayed

            Parallel(n_jobs=WORKERS)(delayed(spin)(s) for s in warm)
        log(f"cpu: {len(cases)} cases x {settings.cpu_repeats} rounds")
        samples = round_robin(cases, settings.cpu_repeats, clock)
    finally:
        executor.shutdown()
        mp_pool.terminate()
        mp_pool.join()
        shutdown_shared()

    serial_best = min(seconds for seconds, _ in samples["serial loop"])
    section = Section(
        key="cpu",
        title=(
            f"3. CPU-bound: {settings.cpu_tasks} tasks of ~{settings.cpu_task_seconds} s "
            f"({WORKERS} workers); busy = task compute / (workers x wall)"
        ),
        unit="busy",
        higher_is_better=True,
        statistic="best",
        reference="forkjoin fj.map",
        params={"tasks": settings.cpu_tasks, "steps": steps, "repeats": settings.cpu_repeats},
    )
    for name, runs in samples.items():
        workers = 1 if name == "serial loop" else WORKERS
        busy, walls = [], []
        for seconds, durations in runs:
            if len(durations) != settings.cpu_tasks:
                raise AssertionError(f"{name} returned {len(durations)} results")
            busy.append(sum(durations) / (workers * seconds))
            walls.append(seconds)
        wall = min(walls)
        speedup = serial_best / wall
        serial_busy = serial_best / workers / wall
        section.rows.append(
            Row(
                name,
                max(busy),
                busy,
                f"worst run {min(busy):.3f}; wall {wall:.2f} s, speed-up {speedup:.2f}x, "
                f"serial-based busy {serial_busy:.3f}",
                {"wall_seconds": walls, "speedup": speedup, "serial_based_busy": serial_busy},
                compared=name != "serial loop",  # one worker: its busy fraction is 1 by design
            )
        )
    return section
