"""forkjoin on Spark against hand-written PySpark and joblibspark, on one local Spark, in one run.

    python benchmarks/bench_spark.py [--quick] [--json PATH] [--check]

The benchmark starts one local Spark (``local[2]``, driver on 127.0.0.1, UI off, 1 GiB driver)
and every contender runs on it; forkjoin joins it with ``address=<the session>``:

    designs  per-task overhead of three ways to run forkjoin tasks on Spark: a one-partition
             job per task, a batch of tasks as one job's partitions, a call to a host job
             (what backend="spark" does)                                       ms/task  median
    cpu      64 CPU-bound items of ~50 ms: fj.map vs sc.parallelize(items, P).map(f).collect()
             at its best P, and joblib on joblibspark                          items/s  best
    tiny     100k trivial items: the same contenders                            items/s  best
    text     the text UDF of bench_data.py over Parquet: forkjoin.data on Spark
             (read_parquet().map_batches().to_arrow()) vs DataFrame.mapInArrow  rows/s   best
    start    fresh interpreter -> Spark started -> first result: fj.map vs
             SparkSession + sc.parallelize                                      ms       one run

Contenders take turns within each round (round-robin), so load elsewhere hits them alike. Each
forkjoin run is a fresh ``fj.Pool`` (its hosts start and end with it, as a script's pool does),
so host start-up is in forkjoin's time, and the hosts give their cores back before the next
contender's turn. ``--check`` exits 1 if a goal is missed.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))  # the workloads, imported by Spark's Python workers by name

import _data_workloads as workloads  # noqa: E402
from _report import Goal, Row, Section, make_console, publish  # noqa: E402
from bench_engine import git_commit  # noqa: E402

DEFAULT_JSON = HERE / "results" / "bench_spark.json"
WORKERS = 2
# Items joblibspark gets in a section (a Spark job per joblib batch: ~minutes for 100k).
JOBLIBSPARK_ITEMS = 2_000
# The goals, from issue 19.
OVERHEAD_GOAL = 1.05  # forkjoin's time / hand-written sc.parallelize at its best partitions
TEXT_GOAL = 1.0  # forkjoin.data rows/s / mapInArrow rows/s

SPARK_SETTINGS = {
    "spark.ui.enabled": "false",
    "spark.ui.showConsoleProgress": "false",
    "spark.driver.bindAddress": "127.0.0.1",
    "spark.driver.host": "127.0.0.1",
    "spark.driver.memory": "1g",
    "spark.log.level": "ERROR",
    "spark.sql.execution.arrow.pyspark.enabled": "true",
}


@dataclass(frozen=True)
class Settings:
    rounds: int = 3
    cpu_items: int = 64
    cpu_seconds: float = 0.05
    tiny_items: int = 100_000
    partitions: tuple[int, ...] = (2, 4, 8, 16, 64)
    text_rows: int = 200_000
    design_tasks: int = 40


FULL = Settings()
QUICK = Settings(rounds=2, cpu_items=32, tiny_items=20_000, partitions=(2, 8), text_rows=50_000,
                 design_tasks=12)  # fmt: skip


# -- the work --------------------------------------------------------------------------------------


def spin(seconds: float) -> float:
    """~``seconds`` of pure-Python CPU work (a busy loop, not a sleep)."""
    end = time.perf_counter() + seconds
    n = 0
    while time.perf_counter() < end:
        n += 1
    return float(n > 0)


def cpu_item(_: int) -> float:
    return spin(CPU_SECONDS)


CPU_SECONDS = 0.05


def trivial(x: int) -> int:
    return x + 1


# -- contenders ------------------------------------------------------------------------------------


def timed(run: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    out = run()
    return time.perf_counter() - start, out


def round_robin(
    contenders: dict[str, Callable[[], Any]], rounds: int, check: Callable[[Any], bool], log: Any
) -> dict[str, list[float]]:
    seconds: dict[str, list[float]] = {name: [] for name in contenders}
    for r in range(rounds):
        for name, run in contenders.items():
            took, out = timed(run)
            if not check(out):
                raise AssertionError(f"{name} returned a wrong result")
            seconds[name].append(took)
            log(f"  round {r + 1}: {name} {took:.3f} s")
    return seconds


def fj_map(session: Any, fn: Callable[[Any], Any], items: Sequence[Any]) -> Callable[[], Any]:
    import forkjoin as fj

    def run() -> Any:
        with fj.Pool(WORKERS, "spark", address=session) as pool:
            return pool.map_list(fn, items)

    return run


def native_map(sc: Any, fn: Callable[[Any], Any], items: Sequence[Any], parts: int) -> Any:
    return lambda: sc.parallelize(items, parts).map(fn).collect()


def joblibspark_map(fn: Callable[[Any], Any], items: Sequence[Any]) -> Callable[[], Any]:
    def run() -> Any:
        import joblib
        from joblibspark import register_spark

        register_spark()
        with joblib.parallel_backend("spark", n_jobs=WORKERS):
            return joblib.Parallel()(joblib.delayed(fn)(x) for x in items)

    return run


def has_joblibspark() -> bool:
    try:
        import joblibspark  # noqa: F401
    except ImportError:
        return False
    return True


def rate_section(
    key: str, title: str, n: int, seconds: dict[str, list[float]], notes: list[str]
) -> Section:
    section = Section(key, title, "items/s", True, "best", "forkjoin fj.map")
    for name, runs in seconds.items():
        rates = [n / s for s in runs]
        section.rows.append(
            Row(name, max(rates), rates, f"median {n / statistics.median(runs):,.0f}")
        )
    section.notes.extend(notes)
    return section


def bench_map_section(
    key: str, title: str, session: Any, fn: Callable[[Any], Any], items: list[Any],
    settings: Settings, log: Any, slow_peer_rounds: int,
) -> Section:  # fmt: skip
    sc = session.sparkContext
    expected = [fn(x) for x in items] if fn is trivial else None
    check: Callable[[Any], bool] = (
        (lambda out: out == expected)
        if expected is not None
        else (lambda out: len(out) == len(items))
    )
    # Native's best partition count, chosen by one run of each (then timed round-robin).
    trial = {p: timed(native_map(sc, fn, items, p))[0] for p in settings.partitions}
    best = min(trial, key=lambda p: trial[p])
    log(f"{key}: native partition trials {trial}; best {best}")
    contenders = {
        "forkjoin fj.map": fj_map(session, fn, items),
        f"native sc.parallelize (P={best})": native_map(sc, fn, items, best),
    }
    seconds = round_robin(contenders, settings.rounds, check, log)
    notes = ["native partitions tried: " + ", ".join(f"{p}: {t:.2f} s" for p, t in trial.items())]
    section = rate_section(key, title, len(items), seconds, notes)
    if has_joblibspark():
        # joblibspark runs each joblib batch as a Spark job: on many items it takes minutes,
        # so it gets at most JOBLIBSPARK_ITEMS of them and its rate is of those.
        subset = items[:JOBLIBSPARK_ITEMS]
        runs = round_robin(
            {"joblibspark": joblibspark_map(fn, subset)}, slow_peer_rounds,
            lambda out: len(out) == len(subset), log,
        )["joblibspark"]  # fmt: skip
        rates = [len(subset) / s for s in runs]
        section.rows.append(Row("joblibspark", max(rates), rates, f"on {len(subset):,} items"))
    else:
        section.notes.append("joblibspark not installed: pip install joblibspark")
    return section


# -- the text UDF over Parquet ---------------------------------------------------------------------


def bench_text(session: Any, settings: Settings, data: str, log: Any) -> Section:
    import pyarrow as pa

    import forkjoin as fj

    info = workloads.generate(data, settings.text_rows)
    rows = info["rows"]

    def ours() -> Any:
        with fj.Pool(WORKERS, "spark", address=session) as pool:
            ds = fj.data.read_parquet(data, columns=workloads.TEXT_COLUMNS)
            return ds.map_batches(workloads.text_arrow).to_arrow(pool=pool)

    def in_arrow(batches: Any) -> Any:
        for batch in batches:
            table = workloads.text_arrow(pa.Table.from_batches([batch]))
            yield from table.to_batches()

    def theirs() -> Any:
        df = session.read.parquet(data).select(*workloads.TEXT_COLUMNS)
        out = df.mapInArrow(in_arrow, "id long, tokens long, distinct long")
        return out.toArrow()

    seconds = round_robin(
        {"forkjoin.data on Spark": ours, "pyspark mapInArrow": theirs},
        settings.rounds,
        lambda table: table.num_rows == rows,
        log,
    )
    section = Section("text", f"text UDF over Parquet ({rows:,} rows)", "rows/s", True, "best",
                      "forkjoin.data on Spark")  # fmt: skip
    for name, runs in seconds.items():
        rates = [rows / s for s in runs]
        section.rows.append(
            Row(name, max(rates), rates, f"median {rows / statistics.median(runs):,.0f}")
        )
    return section


# -- per-task overhead of the three designs ------------------------------------------------------


def bench_designs(session: Any, settings: Settings, log: Any) -> Section:
    """ms per task: one job per task, a batch as one job, a call to a host (fj.map, chunk 1)."""
    import forkjoin as fj

    sc = session.sparkContext
    n = settings.design_tasks

    def job_per_task() -> Any:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(WORKERS) as threads:  # two jobs at once, as two workers would
            return list(threads.map(lambda i: sc.parallelize([i], 1).map(trivial).collect()[0],
                                    range(n)))  # fmt: skip

    def batched() -> Any:
        return sc.parallelize(range(n), n).map(trivial).collect()

    def hosts() -> Any:
        return pool.map_list(trivial, range(n), chunksize=1)

    with fj.Pool(WORKERS, "spark", address=session) as pool:
        pool.map_list(trivial, range(4), chunksize=1)  # hosts started: measure the calls
        seconds = round_robin(
            {"a job per task": job_per_task, "a batch as one job": batched,
             "host job calls (backend='spark')": hosts},
            settings.rounds,
            lambda out: list(out) == [trivial(i) for i in range(n)],
            log,
        )  # fmt: skip
    section = Section("designs", f"per-task overhead of three designs ({n} trivial tasks)", "ms",
                      False, "median", "host job calls (backend='spark')")  # fmt: skip
    for name, runs in seconds.items():
        per_task = [s / n * 1000 for s in runs]
        section.rows.append(Row(name, statistics.median(per_task), per_task))
    section.notes.append("a job per task: 2 threads submitting one-partition jobs; a batch: one "
                         "job of n partitions (returns only when all end)")  # fmt: skip
    return section


# -- start-up ------------------------------------------------------------------------------------

_START_FJ = """
import time; t = time.perf_counter()
import forkjoin as fj
assert fj.map(abs, [-1], backend="spark", workers=2) == [1]
print(time.perf_counter() - t)
"""
_START_NATIVE = """
import time; t = time.perf_counter()
from pyspark.sql import SparkSession
b = SparkSession.builder.master("local[2]")
for k, v in %r.items(): b = b.config(k, v)
s = b.getOrCreate(); assert s.sparkContext.parallelize([-1], 1).map(abs).collect() == [1]
print(time.perf_counter() - t); s.stop()
"""


def bench_start(log: Any) -> Section:
    section = Section("start", "start-up: fresh interpreter -> Spark -> first result", "ms", False,
                      "median", "forkjoin fj.map")  # fmt: skip
    native = _START_NATIVE % SPARK_SETTINGS
    for name, code in (("forkjoin fj.map", _START_FJ), ("native SparkSession", native)):
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              timeout=300)  # fmt: skip
        if done.returncode != 0:
            raise RuntimeError(f"{name} failed: {done.stderr[-2000:]}")
        ms = float(done.stdout.strip().splitlines()[-1]) * 1000
        log(f"start: {name} {ms:.0f} ms")
        section.rows.append(Row(name, ms, [ms]))
    return section


# -- goals and main ------------------------------------------------------------------------------


def time_goal(section: Section, text: str) -> Goal:
    ours = section.row("forkjoin fj.map")
    native = next(r for r in section.rows if r.name.startswith("native"))
    best = native.value / ours.value  # rates: time ratio = their rate / ours
    median = statistics.median(native.runs) / statistics.median(ours.runs)
    return Goal(section.key, text, OVERHEAD_GOAL, False, "x", "best", best, median)


def evaluate_goals(sections: dict[str, Section]) -> list[Goal]:
    goals = []
    if "cpu" in sections:
        goals.append(
            time_goal(sections["cpu"], "CPU-bound map: forkjoin time / native best-P time")
        )
    if "tiny" in sections:
        goals.append(time_goal(sections["tiny"], "100k trivial items: forkjoin / native best-P"))
    if "text" in sections:
        s = sections["text"]
        ours, theirs = s.row("forkjoin.data on Spark"), s.row("pyspark mapInArrow")
        median = statistics.median(ours.runs) / statistics.median(theirs.runs)
        text = "text UDF: forkjoin.data rows/s / mapInArrow rows/s"
        goals.append(Goal("text", text, TEXT_GOAL, True, "x", "best", ours.value / theirs.value,
                          median))  # fmt: skip
    return goals


def start_session() -> Any:
    from pyspark.sql import SparkSession

    builder = SparkSession.builder.master(f"local[{WORKERS}]").appName("bench_spark")
    for key, value in SPARK_SETTINGS.items():
        builder = builder.config(key, value)
    builder = builder.config(
        "spark.executorEnv.PYTHONPATH", os.pathsep.join([str(HERE), *sys.path])
    )
    session = builder.getOrCreate()
    session.sparkContext.setLogLevel("ERROR")
    return session


def main(argv: Sequence[str] | None = None, console: Any = None) -> int:
    global CPU_SECONDS
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON)
    parser.add_argument("--only", default="designs,cpu,tiny,text,start")
    parser.add_argument("--check", action="store_true")
    parser.add_argument("--data", default=os.path.join(tempfile.gettempdir(), "bench_spark_data"))
    args = parser.parse_args(argv)
    settings = QUICK if args.quick else FULL
    CPU_SECONDS = settings.cpu_seconds
    only = set(args.only.split(","))
    console = console or make_console()

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    started = time.time()
    load_start = os.getloadavg()
    sections: dict[str, Section] = {}
    session = start_session()
    try:
        if "designs" in only:
            sections["designs"] = bench_designs(session, settings, log)
        if "cpu" in only:
            items = list(range(settings.cpu_items))
            title = f"CPU-bound map ({settings.cpu_items} items of ~{CPU_SECONDS * 1000:.0f} ms)"
            sections["cpu"] = bench_map_section(
                "cpu", title,
                session, cpu_item, items, settings, log, slow_peer_rounds=settings.rounds,
            )  # fmt: skip
        if "tiny" in only:
            items = list(range(settings.tiny_items))
            sections["tiny"] = bench_map_section(
                "tiny", f"{settings.tiny_items:,} trivial items", session, trivial, items,
                settings, log, slow_peer_rounds=1,
            )  # fmt: skip
        if "text" in only:
            sections["text"] = bench_text(session, settings, args.data, log)
    finally:
        session.stop()
        import forkjoin.backends.spark_session as spark_session

        spark_session.stop_jvm()
    if "start" in only:
        sections["start"] = bench_start(log)
    goals = evaluate_goals(sections)
    meta = {
        "benchmark": "bench_spark", "quick": args.quick, "commit": git_commit(),
        "workers": WORKERS, "seconds_total": time.time() - started, "loadavg_start": load_start,
        "loadavg_end": os.getloadavg(), "settings": settings.__dict__,
    }  # fmt: skip
    return publish(meta, list(sections.values()), goals, console, args.json, args.check)


if __name__ == "__main__":
    sys.exit(main())
