"""The figures of ``bench_cluster``: forkjoin on Ray / Dask against hand-written native code.

Each section runs on an engine instance that is already started and warm (``_cluster_engines``),
measures round-robin and leaves forkjoin's shared pools shut down, so the next section starts
clean. Start-up (``bench_start``) runs in fresh interpreters instead.
"""

from __future__ import annotations

import functools
import json
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from _cluster_engines import Engine
from _cluster_workloads import split
from _harness import (
    WORKERS,
    Case,
    Clock,
    Log,
    calibrate_spin,
    check_equal,
    round_robin,
    shutdown_shared,
    timed,
)
from _report import Row, Section
from _workloads import identity, spin

HERE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class ClusterSettings:
    """Sizes and repeat counts; ``CLUSTER_QUICK`` is the smoke run."""

    cpu_items: int = 64
    cpu_item_seconds: float = 0.05
    cpu_chunksize: int = 4  # 16 chunks of ~0.2 s on 2 workers
    cpu_repeats: int = 5
    map_items: int = 100_000
    map_chunksizes: tuple[int, ...] = (6_250, 12_500, 25_000, 50_000)
    map_repeats: int = 10
    tiny_items: int = 5_000
    tiny_repeats: int = 3
    tiny_native_repeats: int = 2  # native one-task-per-item: ~5-50 s a run here
    start_repeats: int = 3
    warmup_tasks: int = 50  # per engine: starts every worker, ships the functions


CLUSTER_FULL = ClusterSettings()
CLUSTER_QUICK = ClusterSettings(
    cpu_items=32,
    cpu_item_seconds=0.02,
    cpu_repeats=2,
    map_items=50_000,
    map_chunksizes=(6_250, 12_500),
    map_repeats=3,
    tiny_items=1_000,
    tiny_repeats=2,
    tiny_native_repeats=1,
    start_repeats=1,
)


def warm(engine: Engine, settings: ClusterSettings) -> None:
    """Every worker up and every function imported there, for native code and forkjoin alike."""
    import forkjoin as fj

    items = list(range(settings.warmup_tasks))
    for _ in range(2):
        check_equal("native", engine.native_each(identity, items), items)
        check_equal("native", engine.native_chunks(identity, split(items, 5)), items)
        engine.native_chunks(spin, split([1_000] * settings.warmup_tasks, 5))
        check_equal("forkjoin", fj.map(identity, items, chunksize=1, **engine.fj_options()), items)
        check_equal("forkjoin", fj.map(identity, items, **engine.fj_options()), items)
        fj.map(spin, [1_000] * settings.warmup_tasks, chunksize=5, **engine.fj_options())


def rate_row(name: str, n: int, runs: list[tuple[float, Any]], detail: str = "") -> Row:
    rates = [n / seconds for seconds, _ in runs]
    text = f"best {min(s for s, _ in runs):.3f} s; median {statistics.median(rates):,.0f}/s"
    return Row(
        name,
        max(rates),
        rates,
        f"{detail}; {text}" if detail else text,
        {"seconds": [seconds for seconds, _ in runs]},
    )


# -- 1. chunked map, CPU-bound -------------------------------------------------------------------


def bench_cpu(engine: Engine, settings: ClusterSettings, clock: Clock, log: Log) -> Section:
    """The same CPU-bound chunks through native code and forkjoin: what forkjoin's layer costs.

    busy = compute time measured inside the tasks / (workers x wall time), in the detail column.
    """
    import forkjoin as fj

    steps = calibrate_spin(settings.cpu_item_seconds)
    items = [steps] * settings.cpu_items
    size = settings.cpu_chunksize
    chunks = split(items, size)
    options = engine.fj_options()
    native = f"native {engine.label}: {engine.chunk_api}, chunksize={size}"
    same = f"forkjoin fj.map(backend={engine.name!r}, chunksize={size})"
    auto = f"forkjoin fj.map(backend={engine.name!r}, chunksize='auto')"
    cases: dict[str, Case] = {
        same: timed(lambda: fj.map(spin, items, chunksize=size, **options)),
        native: timed(lambda: engine.native_chunks(spin, chunks)),
        auto: timed(lambda: fj.map(spin, items, **options)),
    }
    log(
        f"{engine.name} cpu: {len(items)} items of {steps:,} steps (~{settings.cpu_item_seconds}"
        f" s) x {settings.cpu_repeats} rounds"
    )
    try:
        samples = round_robin(cases, settings.cpu_repeats, clock)
    finally:
        shutdown_shared()
    section = Section(
        key=f"cpu-{engine.name}",
        title=(
            f"1. {engine.label}: chunked map, {len(items)} CPU-bound items of "
            f"~{settings.cpu_item_seconds * 1000:.0f} ms in chunks of {size} ({WORKERS} workers)"
        ),
        unit="items/s",
        higher_is_better=True,
        statistic="best",
        reference=same,
        params={"items": len(items), "steps": steps, "chunksize": size},
        notes=["busy = task compute / (workers x wall): how much of the workers' time was work"],
    )
    for name, runs in samples.items():
        busy = []
        for seconds, values in runs:
            if len(values) != len(items) or not all(isinstance(v, float) for v in values):
                raise AssertionError(f"{name} returned a wrong result")
            busy.append(sum(values) / (WORKERS * seconds))
        row = rate_row(name, len(items), runs, f"busy {max(busy):.3f}")
        row.extra["busy"] = busy
        section.rows.append(row)
    return section


# -- 2. chunked map, trivial items ---------------------------------------------------------------


def bench_map(engine: Engine, settings: ClusterSettings, clock: Clock, log: Log) -> Section:
    """Many trivial items: native hand-chunked at its best chunksize vs forkjoin's auto chunks
    (and forkjoin at the native code's chunksizes: the layer's own cost on the same tasks)."""
    import forkjoin as fj

    n = settings.map_items
    items = list(range(n))
    options = engine.fj_options()
    auto = f"forkjoin fj.map(backend={engine.name!r}, chunksize='auto')"
    cases: dict[str, Case] = {auto: timed(lambda: fj.map(identity, items, **options))}
    native_keys: dict[int, str] = {}
    fj_keys: dict[int, str] = {}
    for size in settings.map_chunksizes:
        chunks = split(items, size)
        native_keys[size] = f"native {engine.label} chunksize={size}"
        cases[native_keys[size]] = timed(functools.partial(engine.native_chunks, identity, chunks))
        fj_keys[size] = f"forkjoin chunksize={size}"
        cases[fj_keys[size]] = timed(
            functools.partial(fj.map, identity, items, chunksize=size, **options)
        )
    log(f"{engine.name} map: {n:,} items, {len(cases)} cases x {settings.map_repeats} rounds")
    try:
        samples = round_robin(cases, settings.map_repeats, clock)
    finally:
        shutdown_shared()
    for name, runs in samples.items():
        for _, value in runs:
            check_equal(name, value, items)

    def median_rate(name: str) -> float:
        return statistics.median(n / seconds for seconds, _ in samples[name])

    chosen = max(settings.map_chunksizes, key=lambda size: median_rate(native_keys[size]))
    section = Section(
        key=f"map-{engine.name}",
        title=f"2. {engine.label}: chunked map of {n:,} trivial items ({WORKERS} workers)",
        unit="items/s",
        higher_is_better=True,
        statistic="best",
        reference=auto,
        params={"items": n, "chunksizes": settings.map_chunksizes, "native_best": chosen},
        notes=[
            "native's best chunksize is the one with the best median; forkjoin at that same "
            "chunksize measures forkjoin's own cost on identical tasks"
        ],
    )
    section.rows.append(rate_row(auto, n, samples[auto]))
    same = rate_row(f"forkjoin fj.map(chunksize={chosen})", n, samples[fj_keys[chosen]])
    section.rows.append(same)
    sweep = {size: round(median_rate(native_keys[size])) for size in settings.map_chunksizes}
    native = rate_row(
        f"native {engine.label}: {engine.chunk_api} (best chunksize)",
        n,
        samples[native_keys[chosen]],
        f"chunksize={chosen}",
    )
    native.extra.update({"chunksize": chosen, "median_by_chunksize": sweep})
    section.rows.append(native)
    section.rows[1].extra["median_by_chunksize"] = {
        size: round(median_rate(fj_keys[size])) for size in settings.map_chunksizes
    }
    return section


# -- 3. many tiny tasks --------------------------------------------------------------------------


def bench_tiny(engine: Engine, settings: ClusterSettings, clock: Clock, log: Log) -> Section:
    """N trivial items: native one engine task per item (the naive code) vs fj.map (auto)."""
    import forkjoin as fj

    n = settings.tiny_items
    items = list(range(n))
    options = engine.fj_options()
    ours = f"forkjoin fj.map(backend={engine.name!r}, chunksize='auto')"
    native = f"native {engine.label}: {engine.each_api}"
    cases: dict[str, Case] = {
        ours: timed(lambda: fj.map(identity, items, **options)),
        native: timed(lambda: engine.native_each(identity, items)),
    }
    log(f"{engine.name} tiny: {n:,} items x {settings.tiny_repeats} rounds")
    try:
        repeats = {ours: settings.tiny_repeats, native: settings.tiny_native_repeats}
        samples = round_robin(cases, repeats, clock)
    finally:
        shutdown_shared()
    for name, runs in samples.items():
        for _, value in runs:
            check_equal(name, value, items)
    section = Section(
        key=f"tiny-{engine.name}",
        title=f"3. {engine.label}: {n:,} tiny tasks, one engine task per item natively",
        unit="items/s",
        higher_is_better=True,
        statistic="best",
        reference=ours,
        params={"items": n, "repeats": repeats},
    )
    for name, runs in samples.items():
        section.rows.append(rate_row(name, n, runs))
    return section


# -- 4. start-up ---------------------------------------------------------------------------------


def bench_start(engine_name: str, settings: ClusterSettings, clock: Clock, log: Log) -> Section:
    """A fresh interpreter per run: import -> engine start -> first result, median of N."""
    label = {"ray": "Ray", "dask": "Dask"}[engine_name]
    contenders = {
        f"forkjoin fj.map(backend={engine_name!r})": f"{engine_name}_forkjoin",
        f"native {label}": f"{engine_name}_native",
    }
    log(f"{engine_name} start: {len(contenders)} contenders x {settings.start_repeats} rounds")

    def one(contender: str) -> Case:
        def case(_: Clock) -> tuple[float, Any]:
            data = run_cold(contender)
            return data["first_s"], data

        return case

    cases = {name: one(key) for name, key in contenders.items()}
    samples = round_robin(cases, settings.start_repeats, clock)
    section = Section(
        key=f"start-{engine_name}",
        title=f"4. {label}: fresh interpreter -> engine started -> first result",
        unit="ms",
        higher_is_better=False,
        statistic="median",
        reference=next(iter(contenders)),
        params={"repeats": settings.start_repeats},
    )
    for name, runs in samples.items():
        ms = [seconds * 1000 for seconds, _ in runs]
        imports = [data["import_s"] * 1000 for _, data in runs]
        section.rows.append(
            Row(
                name,
                statistics.median(ms),
                ms,
                f"import {statistics.median(imports):.0f} ms; best {min(ms):.0f} ms",
                {"import_ms": imports},
            )
        )
    return section


# Ray's plain ray.init() joins a Ray that another program on this machine started at that
# moment (and then refuses num_cpus=): on a shared machine, try such a start again.
RAY_JOINED_ANOTHER = "When connecting to an existing cluster"


def run_cold(contender: str, timeout: float = 180.0, attempts: int = 3) -> dict[str, Any]:
    from _latency import cold_start_env

    for attempt in range(attempts):
        done = subprocess.run(
            [sys.executable, str(HERE / "_cluster_coldstart.py"), contender, str(WORKERS)],
            cwd=HERE,
            env={**cold_start_env(), "PYTHONPATH": str(HERE)},
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        for line in done.stdout.splitlines():
            if line.startswith("RESULT "):
                result: dict[str, Any] = json.loads(line[len("RESULT ") :])
                result["attempts"] = attempt + 1
                return result
        if RAY_JOINED_ANOTHER not in done.stderr:
            break
        time.sleep(5)
    raise RuntimeError(
        f"cold start {contender} failed (exit {done.returncode}): {done.stderr[-2000:]}"
    )
