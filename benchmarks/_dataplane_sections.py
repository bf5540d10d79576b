"""The data-plane benchmark's contenders and its three in-process sections: send, return, broadcast.

All contenders' pools are started once, in an order that keeps forks clean (the forking pools
first, before any thread or big array exists; Ray last), warmed, and shared by the sections; each
section warms them again with its own function and data before timing. Contenders take turns run
by run (``_harness.round_robin``). Every run is timed with a memory window open on the caller plus
that contender's own processes (``_dataplane_memory``).
"""

from __future__ import annotations

import functools
import math
import os
import statistics
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _dataplane_memory import Peak, TreeSampler, children_now, descendants
from _dataplane_workloads import (
    block_sum,
    block_sum_shared,
    expected_block_sums,
    make,
    make_arrays,
    make_big,
    noop,
    total,
)
from _harness import WORKERS, Case, Clock, Log, check_equal, round_robin, wait_until_ready
from _report import Row, Section

HERE = Path(__file__).resolve().parent
GiB = 1024**3
MiB = 1024**2
KiB = 1024

TOOLS = ("forkjoin", "executor", "mp", "joblib", "ray")


@dataclass(frozen=True)
class Settings:
    """Sizes and repeat counts; ``QUICK`` is the smoke test's (well under a minute)."""

    array_bytes: int = 16 * MiB  # send and return: one array
    distinct_arrays: int = 8  # send: pre-generated arrays, cycled over the tasks
    send_tasks: int = 64  # 64 x 16 MiB = 1 GiB a run
    return_tasks: int = 64
    repeats: int = 5  # send and return, after one untimed warm-up run
    broadcast_bytes: int = GiB
    broadcast_tasks: int = 64
    broadcast_repeats: int = 3
    broadcast_slow_repeats: int = 1  # executor and multiprocessing: 8 pickles of the object a run
    broadcast_warmup_bytes: int = 16 * MiB  # the untimed broadcast run per contender
    threshold_sizes: tuple[int, ...] = (
        16 * KiB, 32 * KiB, 64 * KiB, 128 * KiB, 256 * KiB, 512 * KiB, MiB, 4 * MiB,
    )  # fmt: skip
    threshold_values: tuple[int, ...] = (
        16 * KiB, 64 * KiB, 128 * KiB, 256 * KiB, MiB, 4 * MiB, 10**12,
    )  # fmt: skip
    threshold_run_seconds: float = 0.3  # each timed run of the echo tasks, roughly
    threshold_repeats: int = 5


FULL = Settings()
QUICK = Settings(
    send_tasks=8,
    return_tasks=8,
    repeats=2,
    broadcast_bytes=64 * MiB,
    broadcast_tasks=4,
    broadcast_repeats=2,
    broadcast_warmup_bytes=4 * MiB,
    threshold_sizes=(64 * KiB, MiB),
    threshold_values=(64 * KiB, 10**12),
    threshold_run_seconds=0.1,
    threshold_repeats=2,
)


def format_bytes(n: float) -> str:
    for unit, size in (("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if n >= size:
            value = n / size
            return f"{value:.0f} {unit}" if value == int(value) else f"{value:.2f} {unit}"
    return f"{n:.0f} B"


def have(module: str) -> bool:
    try:
        __import__(module)
    except ImportError:
        return False
    return True


# -- contenders ----------------------------------------------------------------------------------


@dataclass
class Contenders:
    """Every contender's pool, started and warmed, and which processes belong to whom."""

    tools: list[str]
    sampler: TreeSampler
    roots: dict[str, set[int]] = field(default_factory=dict)
    pool: Any = None  # forkjoin.Pool
    executor: Any = None
    mp_pool: Any = None
    ray: Any = None
    ray_fns: dict[str, Any] = field(default_factory=dict)

    def processes_of(self, tool: str) -> set[int]:
        """The roots of ``tool``'s processes. joblib's (loky's) pool may be replaced between calls,
        so its processes are whatever children belong to no other contender."""
        if tool != "joblib":
            return self.roots.get(tool, set())
        others = descendants(set().union(*(p for t, p in self.roots.items() if t != "joblib")))
        return children_now() - others

    def measured(self, tool: str, run: Callable[[], tuple[Any, dict[str, Any]]]) -> Case:
        """A case: ``run`` timed, inside a memory window on ``tool``'s processes."""

        def case(clock: Clock) -> tuple[float, Any]:
            with self.sampler.window(self.processes_of(tool)) as peak:
                start = clock()
                value, info = run()
                seconds = clock() - start
            return seconds, (value, info, peak)

        return case


def _started(contenders: Contenders, tool: str, start: Callable[[], None]) -> None:
    before = children_now()
    start()
    owned = set().union(*contenders.roots.values()) if contenders.roots else set()
    contenders.roots[tool] = children_now() - before - descendants(owned)


def start_contenders(tools: Iterable[str], log: Log) -> Contenders:
    """Start and warm every pool: forking ones first (nothing big to inherit, no threads yet)."""
    wanted = [tool for tool in TOOLS if tool in set(tools)]
    if "joblib" in wanted and not have("joblib"):
        log("joblib is not installed: no joblib rows")
        wanted.remove("joblib")
    if "ray" in wanted and not have("ray"):
        log("ray is not installed: no Ray rows (pip install 'ray[default]')")
        wanted.remove("ray")
    c = Contenders(wanted, TreeSampler())
    warm = list(range(4 * WORKERS))
    if "mp" in wanted:
        import multiprocessing

        def start_mp() -> None:
            c.mp_pool = multiprocessing.Pool(WORKERS)
            check_equal("mp", c.mp_pool.map(noop, warm, chunksize=1), warm)

        _started(c, "mp", start_mp)
    if "executor" in wanted:
        from concurrent.futures import ProcessPoolExecutor

        def start_executor() -> None:
            c.executor = ProcessPoolExecutor(WORKERS)
            check_equal("executor", list(c.executor.map(noop, warm)), warm)

        _started(c, "executor", start_executor)
    if "forkjoin" in wanted:
        import forkjoin as fj

        def start_forkjoin() -> None:
            c.pool = fj.Pool(WORKERS)
            check_equal("forkjoin", c.pool.map_list(noop, warm), warm)
            wait_until_ready(c.pool.stats)

        _started(c, "forkjoin", start_forkjoin)
    if "joblib" in wanted:
        from joblib import Parallel, delayed

        def start_joblib() -> None:
            got = Parallel(n_jobs=WORKERS)(delayed(noop)(i) for i in warm)
            check_equal("joblib", got, warm)

        _started(c, "joblib", start_joblib)
    if "ray" in wanted:
        _started(c, "ray", lambda: start_ray(c))
    log(
        "pools up: "
        + ", ".join(f"{tool} ({len(c.roots.get(tool, ()))} processes)" for tool in wanted)
    )
    return c


def start_ray(c: Contenders) -> None:
    # Ray's workers are not forked from here: they find the workloads module by PYTHONPATH.
    paths = [str(HERE), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    os.environ["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    import ray

    ray.init(
        num_cpus=WORKERS,
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        log_to_driver=False,
        configure_logging=False,
    )
    c.ray = ray
    c.ray_fns = {
        name: ray.remote(num_cpus=1)(fn)
        for name, fn in {
            "noop": noop,
            "total": total,
            "make": make,
            "block_sum": block_sum,
        }.items()
    }
    warm = list(range(4 * WORKERS))
    check_equal("ray", ray.get([c.ray_fns["noop"].remote(i) for i in warm]), warm)


def stop_contenders(c: Contenders) -> None:
    if c.pool is not None:
        c.pool.shutdown()
    if c.executor is not None:
        c.executor.shutdown()
    if c.mp_pool is not None:
        c.mp_pool.terminate()
        c.mp_pool.join()
    if "joblib" in c.tools:
        from joblib.externals.loky import get_reusable_executor

        get_reusable_executor().shutdown(wait=True)
    if c.ray is not None:
        c.ray.shutdown()
    c.sampler.close()


# -- rows ----------------------------------------------------------------------------------------


def memory_extra(peaks: list[Peak]) -> dict[str, Any]:
    """Peaks over a contender's runs, and the most one run rose above the tree at rest."""
    with_pss = [p for p in peaks if p.pss is not None and p.start_pss is not None]
    return {
        "peak_rss": max(p.rss for p in peaks),
        "rise_rss": max(p.rss - p.start_rss for p in peaks),
        "peak_pss": max(p.pss for p in with_pss) if with_pss else None,  # type: ignore[type-var]
        "rise_pss": max(p.pss - p.start_pss for p in with_pss) if with_pss else None,  # type: ignore[operator]
        "peak_rss_runs": [p.rss for p in peaks],
        "start_rss_runs": [p.start_rss for p in peaks],
        "memory_processes": max(p.processes for p in peaks),
        "memory_samples": sum(p.samples for p in peaks),
    }


def throughput_rows(
    section: Section,
    samples: dict[str, list[tuple[float, Any]]],
    payload: int,
    expected: Any,
    notes: dict[str, str],
) -> None:
    """GiB/s rows (payload bytes / wall time), checked against ``expected``."""
    for name, runs in samples.items():
        for _, (value, _, _) in runs:
            check_equal(name, value, expected)
        seconds = [s for s, _ in runs]
        rates = [payload / GiB / s for s in seconds]
        extra = {"seconds": seconds, "median": statistics.median(rates)}
        extra.update(memory_extra([peak for _, (_, _, peak) in runs]))
        infos = [info for _, (_, info, _) in runs if info]
        if infos:
            extra["info"] = infos
        section.rows.append(Row(name, max(rates), rates, notes.get(name, ""), extra))


def _tools_cases(
    c: Contenders, runners: dict[str, tuple[str, Callable[[], Any]]]
) -> dict[str, Case]:
    """``runners``: row name -> (tool, run); a run returns its value, or (value, info)."""

    def wrap(run: Callable[[], Any]) -> Callable[[], tuple[Any, dict[str, Any]]]:
        def inner() -> tuple[Any, dict[str, Any]]:
            out = run()
            return out if isinstance(out, tuple) else (out, {})

        return inner

    return {name: c.measured(tool, wrap(run)) for name, (tool, run) in runners.items()}


def _warm(c: Contenders, runners: dict[str, tuple[str, Callable[[], Any]]], expected: Any) -> None:
    for name, (_, run) in runners.items():
        out = run()
        check_equal(name, out[0] if isinstance(out, tuple) else out, expected)


# -- 1. send -------------------------------------------------------------------------------------


def bench_send(settings: Settings, c: Contenders, clock: Clock, log: Log) -> Section:
    """Each task receives a 16 MiB array and returns its sum."""
    arrays = make_arrays(settings.distinct_arrays, settings.array_bytes)
    sums = [total(a) for a in arrays]
    n = settings.send_tasks
    items = [arrays[i % len(arrays)] for i in range(n)]
    expected = [sums[i % len(arrays)] for i in range(n)]
    payload = n * settings.array_bytes
    runners: dict[str, tuple[str, Callable[[], Any]]] = {}
    if c.pool is not None:
        runners["forkjoin Pool.map_list"] = ("forkjoin", lambda: c.pool.map_list(total, items))
        runners["forkjoin Pool.imap"] = ("forkjoin", lambda: list(c.pool.imap(total, items)))
    if c.executor is not None:
        runners["ProcessPoolExecutor.map"] = (
            "executor",
            lambda: list(c.executor.map(total, items)),
        )
    if c.mp_pool is not None:
        runners["multiprocessing.Pool.map"] = (
            "mp",
            lambda: c.mp_pool.map(total, items, chunksize=1),
        )
    if "joblib" in c.tools:
        from joblib import Parallel, delayed

        runners["joblib Parallel"] = (
            "joblib",
            lambda: Parallel(n_jobs=WORKERS)(delayed(total)(a) for a in items),
        )
    if c.ray is not None:
        remote = c.ray_fns["total"]
        runners["Ray f.remote(arr)"] = ("ray", lambda: c.ray.get([remote.remote(a) for a in items]))
    log(f"send: warming {len(runners)} contenders with one untimed run each")
    _warm(c, runners, expected)
    log(f"send: {n} x {format_bytes(settings.array_bytes)}, {settings.repeats} rounds")
    samples = round_robin(_tools_cases(c, runners), settings.repeats, clock)
    section = Section(
        key="send",
        title=(
            f"1. send: {n} tasks each receive a {format_bytes(settings.array_bytes)} float64 array "
            f"({format_bytes(payload)} a run) and return its sum"
        ),
        unit="GiB/s",
        higher_is_better=True,
        statistic="best",
        reference="forkjoin Pool.map_list",
        params={
            "tasks": n,
            "array_bytes": settings.array_bytes,
            "distinct_arrays": settings.distinct_arrays,
            "payload_bytes": payload,
            "repeats": settings.repeats,
        },
        notes=["GiB/s = payload bytes sent to the workers / wall time of the whole map"],
    )
    throughput_rows(
        section,
        samples,
        payload,
        expected,
        {
            "ProcessPoolExecutor.map": "chunksize=1 (default)",
            "multiprocessing.Pool.map": "chunksize=1",
            "joblib Parallel": (
                f"auto memmapping (max_nbytes='1M'): dumps each of the {len(arrays)} distinct "
                f"arrays once per call"
            ),
            "Ray f.remote(arr)": "each call puts its array in the object store",
        },
    )
    return section


# -- 2. return -----------------------------------------------------------------------------------


def last_elements(results: Iterable[Any]) -> list[float]:
    """Receive each result, read one element, drop it (only the float is kept)."""
    return [float(a[-1]) for a in results]


def bench_return(settings: Settings, c: Contenders, clock: Clock, log: Log) -> Section:
    """Task i returns a new 16 MiB array full of i; the caller reads its last element and drops
    it, streaming, so that no contender holds every result at once."""
    n = settings.return_tasks
    mk = functools.partial(make, nbytes=settings.array_bytes)
    expected = [float(i) for i in range(n)]
    payload = n * settings.array_bytes
    runners: dict[str, tuple[str, Callable[[], Any]]] = {}
    if c.pool is not None:
        runners["forkjoin Pool.imap"] = (
            "forkjoin",
            lambda: last_elements(c.pool.imap(mk, range(n))),
        )
        runners["forkjoin Pool.map_list"] = (
            "forkjoin",
            lambda: last_elements(c.pool.map_list(mk, range(n))),
        )
    if c.executor is not None:
        runners["ProcessPoolExecutor.map"] = (
            "executor",
            lambda: last_elements(c.executor.map(mk, range(n))),
        )
    if c.mp_pool is not None:
        runners["multiprocessing.Pool.imap"] = (
            "mp",
            lambda: last_elements(c.mp_pool.imap(mk, range(n), chunksize=1)),
        )
    if "joblib" in c.tools:
        from joblib import Parallel, delayed

        runners["joblib Parallel (generator)"] = (
            "joblib",
            lambda: last_elements(
                Parallel(n_jobs=WORKERS, return_as="generator")(delayed(mk)(i) for i in range(n))
            ),
        )
    if c.ray is not None:
        remote = c.ray_fns["make"]
        nbytes = settings.array_bytes

        def run_ray() -> list[float]:
            refs = deque(remote.remote(i, nbytes) for i in range(n))
            out = []
            while refs:
                out.append(float(c.ray.get(refs.popleft())[-1]))  # the ref goes with the array
            return out

        runners["Ray f.remote() + ray.get"] = ("ray", run_ray)
    log(f"return: warming {len(runners)} contenders with one untimed run each")
    _warm(c, runners, expected)
    log(f"return: {n} x {format_bytes(settings.array_bytes)}, {settings.repeats} rounds")
    samples = round_robin(_tools_cases(c, runners), settings.repeats, clock)
    section = Section(
        key="return",
        title=(
            f"2. return: {n} tasks each return a new {format_bytes(settings.array_bytes)} float64 "
            f"array ({format_bytes(payload)} a run); the caller reads one element of each"
        ),
        unit="GiB/s",
        higher_is_better=True,
        statistic="best",
        reference="forkjoin Pool.imap",
        params={
            "tasks": n,
            "array_bytes": settings.array_bytes,
            "payload_bytes": payload,
            "repeats": settings.repeats,
        },
        notes=[
            "GiB/s = payload bytes returned / wall time; results are consumed as they arrive "
            "(map_list holds them all: shown for its memory)"
        ],
    )
    throughput_rows(
        section,
        samples,
        payload,
        expected,
        {
            "forkjoin Pool.map_list": "holds every result until the end",
            "ProcessPoolExecutor.map": "chunksize=1 (default)",
            "multiprocessing.Pool.imap": "chunksize=1",
            "joblib Parallel (generator)": "return_as='generator'",
            "Ray f.remote() + ray.get": "all submitted, then ray.get one by one in order",
        },
    )
    return section


# -- 3. broadcast --------------------------------------------------------------------------------


def forkjoin_copied(pool: Any, run: Callable[[], Any]) -> tuple[Any, dict[str, Any]]:
    """``run()`` and the bytes forkjoin reports it moved meanwhile."""
    before = pool.stats()
    value = run()
    after = pool.stats()
    info = {
        "bytes_sent": after.bytes_sent - before.bytes_sent,
        "bytes_shared": after.bytes_shared - before.bytes_shared,
        "bytes_received": after.bytes_received - before.bytes_received,
    }
    return value, info


def broadcast_runners(
    c: Contenders, big: Any, tasks: int
) -> dict[str, tuple[str, Callable[[], Any]]]:
    """Every run starts from the bare object: a fresh fj.shared handle, a fresh partial, a fresh
    ray.put, so that each run pays for getting the object to the workers."""
    runners: dict[str, tuple[str, Callable[[], Any]]] = {}
    if c.pool is not None:
        import forkjoin as fj

        def run_shared() -> tuple[Any, dict[str, Any]]:
            fn = functools.partial(block_sum_shared, fj.shared(big), tasks)
            return forkjoin_copied(c.pool, lambda: c.pool.map_list(fn, range(tasks)))

        def run_partial() -> tuple[Any, dict[str, Any]]:
            fn = functools.partial(block_sum, big, tasks)
            return forkjoin_copied(c.pool, lambda: c.pool.map_list(fn, range(tasks)))

        runners["forkjoin fj.shared + Pool.map_list"] = ("forkjoin", run_shared)
        runners["forkjoin partial + Pool.map_list"] = ("forkjoin", run_partial)
    if c.executor is not None:
        # chunksize as multiprocessing.Pool.map picks it: at its own default of 1 the executor
        # pickles the object once per task (64 GiB for a 1 GiB object: many minutes a run).
        chunksize = mp_default_chunksize(tasks)
        runners["ProcessPoolExecutor.map(partial)"] = (
            "executor",
            lambda: list(
                c.executor.map(
                    functools.partial(block_sum, big, tasks), range(tasks), chunksize=chunksize
                )
            ),
        )
    if c.mp_pool is not None:
        runners["multiprocessing.Pool.map(partial)"] = (
            "mp",
            lambda: c.mp_pool.map(functools.partial(block_sum, big, tasks), range(tasks)),
        )
    if "joblib" in c.tools:
        from joblib import Parallel, delayed

        runners["joblib Parallel"] = (
            "joblib",
            lambda: Parallel(n_jobs=WORKERS)(
                delayed(block_sum)(big, tasks, i) for i in range(tasks)
            ),
        )
    if c.ray is not None:
        remote = c.ray_fns["block_sum"]

        def run_ray() -> list[float]:
            ref = c.ray.put(big)
            return c.ray.get([remote.remote(ref, tasks, i) for i in range(tasks)])

        runners["Ray ray.put + f.remote(ref)"] = ("ray", run_ray)
    return runners


def mp_default_chunksize(tasks: int) -> int:
    chunksize, extra = divmod(tasks, WORKERS * 4)  # multiprocessing.Pool.map's own rule
    return chunksize + 1 if extra else max(chunksize, 1)


def bench_broadcast(settings: Settings, c: Contenders, clock: Clock, log: Log) -> Section:
    """One big read-only object that every task reads a slice of."""
    tasks = settings.broadcast_tasks
    size = settings.broadcast_bytes
    warm_big = make_big(settings.broadcast_warmup_bytes)
    log(f"broadcast: warming with a {format_bytes(warm_big.nbytes)} object")
    _warm(c, broadcast_runners(c, warm_big, tasks), expected_block_sums(warm_big, tasks))
    del warm_big
    log(f"broadcast: building the {format_bytes(size)} object")
    big = make_big(size)
    expected = expected_block_sums(big, tasks)
    runners = broadcast_runners(c, big, tasks)
    slow = ("executor", "mp")  # they pickle the whole object into every chunk
    repeats = {
        name: settings.broadcast_slow_repeats if tool in slow else settings.broadcast_repeats
        for name, (tool, _) in runners.items()
    }
    log(f"broadcast: {tasks} tasks on {format_bytes(size)}, {max(repeats.values())} rounds")
    samples = round_robin(_tools_cases(c, runners), repeats, clock)
    del big, runners
    chunksize = mp_default_chunksize(tasks)
    chunks = math.ceil(tasks / chunksize)
    copies_by_design = {
        "ProcessPoolExecutor.map(partial)": (
            chunks,
            f"pickled per chunk (chunksize={chunksize}: its default, 1, pickles per task)",
        ),
        "multiprocessing.Pool.map(partial)": (
            chunks,
            f"pickled per chunk (default chunksize={chunksize})",
        ),
        "joblib Parallel": (1, "hashed + dumped to a memmap per call; workers map it"),
        "Ray ray.put + f.remote(ref)": (1, "ray.put once; workers read the object store"),
    }
    section = Section(
        key="broadcast",
        title=(
            f"3. broadcast: {tasks} tasks each sum a slice of one {format_bytes(size)} array "
            f"(a fresh handle / partial / put each run)"
        ),
        unit="s",
        higher_is_better=False,
        statistic="best",
        reference="forkjoin fj.shared + Pool.map_list",
        params={"tasks": tasks, "object_bytes": size, "repeats": repeats},
        notes=[
            "copies = bytes copied to get the object to the workers / object size: forkjoin's "
            "from pool.stats() (bytes_sent + bytes_shared), the peers' by how they work",
        ],
    )
    for name, runs in samples.items():
        for _, (value, _, _) in runs:
            check_equal(name, value, expected)
        seconds = [s for s, _ in runs]
        extra: dict[str, Any] = {"seconds": seconds, "median": statistics.median(seconds)}
        extra.update(memory_extra([peak for _, (_, _, peak) in runs]))
        infos = [info for _, (_, info, _) in runs if info]
        detail = ""
        if infos:
            copied = [info["bytes_sent"] + info["bytes_shared"] for info in infos]
            extra["info"] = infos
            extra["bytes_copied"] = copied
            extra["copies"] = max(copied) / size
            extra["copies_source"] = "pool.stats()"
            detail = (
                f"stats: {format_bytes(max(info['bytes_shared'] for info in infos))} shared, "
                f"{format_bytes(max(info['bytes_sent'] for info in infos))} sent"
            )
        elif name in copies_by_design:
            extra["copies"], detail = copies_by_design[name]
            extra["copies_source"] = "by design"
        section.rows.append(Row(name, min(seconds), seconds, detail, extra))
    return section
