"""forkjoin on Ray and Dask against the engines' native APIs written by hand, in one run.

    python benchmarks/bench_cluster.py [--quick] [--json PATH] [--engines ray,dask]
                                       [--only cpu,map,tiny,start] [--check]

For each engine, one instance is started by the benchmark (``ray.init`` / a Dask
``LocalCluster`` + ``Client``, 2 single-threaded workers on loopback, no dashboard) and both the
native code and ``fj.map(backend=...)`` run on it, so they share the very same workers:

    cpu    64 CPU-bound items of ~50 ms, the same chunks of 4 both ways   items/s  best of N
    map    100k trivial items: native hand-chunked (best chunksize) vs
           fj.map chunksize="auto" (and forkjoin at native's chunksize)  items/s  best of N
    tiny   5k trivial items: native one engine task per item vs fj.map   items/s  best of N
    start  fresh interpreter -> engine start -> first result             ms       median of N

Contenders take turns within each round (round-robin), so load elsewhere hits them alike. The
engines run one after the other, never at once. ``--check`` exits 1 if a goal is missed.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))  # the helpers below, and the workloads workers import by name

from _cluster_engines import ENGINES, available  # noqa: E402
from _cluster_sections import (  # noqa: E402
    CLUSTER_FULL,
    CLUSTER_QUICK,
    ClusterSettings,
    bench_cpu,
    bench_map,
    bench_start,
    bench_tiny,
    warm,
)
from _harness import WORKERS, Clock, Log  # noqa: E402
from _report import Goal, Section, make_console, publish  # noqa: E402
from bench_engine import git_commit  # noqa: E402

DEFAULT_JSON = HERE / "results" / "bench_cluster.json"

# The goals, from the issue that asked for this benchmark.
OVERHEAD_GOAL = 1.05  # forkjoin's wall time / the hand-written native code's, chunked maps
TINY_GOAL = 1.0  # fj.map items/s / native one-task-per-item items/s: forkjoin faster

FIGURES = ("cpu", "map", "tiny", "start")
WARM_BENCHES = {"cpu": bench_cpu, "map": bench_map, "tiny": bench_tiny}


# -- goals ---------------------------------------------------------------------------------------


def time_ratio_goal(section: Section, ours: str, native: str, text: str) -> Goal:
    """forkjoin's time over native's, on the best runs and on the median runs (<= target)."""
    mine, theirs = section.row(ours).runs, section.row(native).runs  # rates: time = n / rate
    best = max(theirs) / max(mine)
    median = statistics.median(theirs) / statistics.median(mine)
    return Goal(section.key, text, OVERHEAD_GOAL, False, "x", "best", best, median)


def evaluate_goals(sections: dict[str, Section]) -> list[Goal]:
    goals: list[Goal] = []
    for key, section in sections.items():
        figure, _, engine = key.partition("-")
        label = {"ray": "Ray", "dask": "Dask"}.get(engine, engine)
        names = [row.name for row in section.rows]
        if figure == "cpu":
            native = next(n for n in names if n.startswith("native"))
            text = f"{label} CPU-bound chunked map: forkjoin time / native time, same chunks"
            goals.append(time_ratio_goal(section, section.reference, native, text))
            # The same overhead net of load elsewhere: busy = compute measured inside the tasks
            # / (workers x wall), so a slower machine slows the tasks and the wall clock alike.
            mine, theirs = section.row(section.reference).extra, section.row(native).extra
            best = max(theirs["busy"]) / max(mine["busy"])
            median = statistics.median(theirs["busy"]) / statistics.median(mine["busy"])
            text = f"{label} CPU-bound chunked map: native busy / forkjoin busy (load-proof)"
            goals.append(Goal(key, text, OVERHEAD_GOAL, False, "x", "best", best, median))
        elif figure == "map":
            native = next(n for n in names if n.startswith("native"))
            same = next(n for n in names if n.startswith("forkjoin fj.map(chunksize="))
            n = section.params["items"]
            text = f"{label} {n:,}-item map: forkjoin time / native time, same chunksize"
            goals.append(time_ratio_goal(section, same, native, text))
            text = f"{label} {n:,}-item map: forkjoin auto time / native best-chunksize time"
            goals.append(time_ratio_goal(section, section.reference, native, text))
        elif figure == "tiny":
            native = next(row for row in section.rows if row.name.startswith("native"))
            ours = section.row(section.reference).runs
            by_median = statistics.median(ours) / statistics.median(native.runs)
            text = f"{label} tiny tasks: fj.map items/s / native one task per item"
            goals.append(
                Goal(key, text, TINY_GOAL, True, "x", "best", section.advantage(native), by_median)
            )
    return goals


def metadata(settings: ClusterSettings, quick: bool, engines: Sequence[str]) -> dict[str, Any]:
    import forkjoin

    versions = {"forkjoin": forkjoin.__version__}
    for name in engines:
        versions[name] = ENGINES[name]().version()
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    import platform

    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus_usable": cpus,
        "workers": WORKERS,
        "versions": versions,
        "git": git_commit(),
        "quick": quick,
        "settings": asdict(settings),
        "loadavg_start": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


# -- main ----------------------------------------------------------------------------------------


def run(
    settings: ClusterSettings,
    engines: Sequence[str],
    only: Sequence[str],
    clock: Clock,
    log: Log,
) -> list[Section]:
    """Per engine: cold starts first (nothing else of ours running), then the warm figures on
    one engine instance, which is stopped before the next engine starts."""
    sections: list[Section] = []
    for name in engines:
        done: dict[str, Section] = {}
        if "start" in only:
            done["start"] = bench_start(name, settings, clock, log)
        warm_figures = [figure for figure in FIGURES if figure in only and figure != "start"]
        if warm_figures:
            engine = ENGINES[name]()
            log(f"{name}: starting the engine")
            engine.start()
            try:
                log(f"{name}: warming")
                warm(engine, settings)
                for figure in warm_figures:
                    done[figure] = WARM_BENCHES[figure](engine, settings, clock, log)
            finally:
                from _harness import shutdown_shared

                shutdown_shared()
                engine.stop()
        sections += [done[figure] for figure in FIGURES if figure in done]
    return sections


def main(
    argv: Sequence[str] | None = None,
    console: Any = None,
    clock: Clock = time.perf_counter,
    settings: ClusterSettings | None = None,
) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller runs: a smoke test")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON, help="where to write results")
    parser.add_argument("--engines", default="ray,dask", help="comma-separated: ray, dask")
    parser.add_argument(
        "--only", default=",".join(FIGURES), help=f"comma-separated subset of {','.join(FIGURES)}"
    )
    parser.add_argument("--check", action="store_true", help="exit 1 if a goal is missed")
    args = parser.parse_args(argv)
    only = [key.strip() for key in args.only.split(",") if key.strip()]
    engines = [key.strip() for key in args.engines.split(",") if key.strip()]
    if set(only) - set(FIGURES):
        parser.error(f"unknown figure(s) {sorted(set(only) - set(FIGURES))}")
    if set(engines) - set(ENGINES):
        parser.error(f"unknown engine(s) {sorted(set(engines) - set(ENGINES))}")
    settings = settings or (CLUSTER_QUICK if args.quick else CLUSTER_FULL)
    console = console or make_console()
    started = clock()

    def log(message: str) -> None:
        console.print(f"[{clock() - started:6.1f}s] {message}", style="dim")

    missing = [name for name in engines if not available(name)]
    for name in missing:
        log(f"{name} is not installed: skipped (pip install \"forkjoin[{name}]\")")
    engines = [name for name in engines if name not in missing]
    meta = metadata(settings, args.quick, engines)
    load = meta["loadavg_start"]
    if load and load[0] > 0.5 * meta["cpus_usable"]:
        log(f"note: load average {load[0]:.2f} on {meta['cpus_usable']} cpus: expect noisy figures")
    sections = run(settings, engines, only, clock, log)
    goals = evaluate_goals({s.key: s for s in sections})
    meta["seconds_total"] = clock() - started
    meta["loadavg_end"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    return publish(meta, sections, goals, console, args.json, args.check)


if __name__ == "__main__":
    sys.exit(main())
