"""forkjoin's engine against its peers, side by side in one run.

    python benchmarks/bench_engine.py [--quick] [--json PATH] [--only KEYS] [--check]

Six figures, each measured for forkjoin and for the serial loop / multiprocessing.Pool /
concurrent.futures.ProcessPoolExecutor / joblib (loky) where that makes sense, all on the same
number of workers and on warm pools unless the figure is about start-up:

    submit    trivial tasks: submit all, then gather            tasks/s   best of N
    map       100k trivial items, peers at their best chunksize  items/s   best of N
    cpu       16 pure-Python tasks of ~0.25 s each               busy      best of N
    cold      fresh interpreter -> first result (pool start-up)  ms        median of N
    warm      a second call on a warm pool -> first result       ms        median of N
    eventlog  EventLog.task_submitted + task_finished            us/task   best of N

Throughput figures keep the best run: on a shared machine the slower runs measure the neighbours.
Latency figures keep the median: a one-off wait is what a user actually sees. Every run is in
the JSON. Contenders take turns within each round (round-robin), so a burst of load elsewhere
hurts them alike instead of whichever happened to run then.

Each section starts its pools, warms them, measures and shuts them down, so no section's idle
pools disturb another's. ``--check`` exits with status 1 if a goal is missed.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))  # the helpers below, and the workloads workers import by name

from _harness import FULL, QUICK, WORKERS, Clock, Log, Settings  # noqa: E402
from _latency import bench_cold, bench_eventlog, bench_warm  # noqa: E402
from _report import Goal, Row, Section, make_console, publish  # noqa: E402
from _throughput import bench_cpu, bench_map, bench_submit  # noqa: E402

DEFAULT_JSON = HERE / "results" / "bench_engine.json"

# The goals, from the issue that asked for this benchmark.
SUBMIT_GOAL = 1.4  # forkjoin Pool.submit >= 1.4x multiprocessing.Pool.apply_async, tasks/s
MAP_GOAL = 1.0  # fj.map (auto chunks) >= 1.0x multiprocessing.Pool.map at its best chunksize
BUSY_GOAL = 0.97  # share of the workers' time spent computing on a CPU-bound map
COLD_START_GOAL_MS = 200.0  # import forkjoin -> first result of fj.map, fresh interpreter
WARM_CALL_GOAL_MS = 5.0  # a second call on the warm shared pool -> its first result
EVENTLOG_GOAL_PERCENT = 3.0  # event-log cost as a share of one submitted task's time

SECTIONS = ("submit", "map", "cpu", "cold", "warm", "eventlog")


# -- goals ---------------------------------------------------------------------------------------


def evaluate_goals(sections: dict[str, Section]) -> list[Goal]:
    """The issue's goals, for the sections that ran: by best runs and by median runs."""
    goals: list[Goal] = []

    def ratio_goal(key: str, peer: Row, text: str, target: float) -> Goal:
        section = sections[key]
        ours = section.row(section.reference)
        by_median = statistics.median(ours.runs) / statistics.median(peer.runs)
        return Goal(key, text, target, True, "x", "best", section.advantage(peer), by_median)

    def figure_goal(key: str, text: str, target: float, at_least: bool, unit: str) -> Goal:
        section = sections[key]
        runs = section.row(section.reference).runs
        best = max(runs) if section.higher_is_better else min(runs)
        median = statistics.median(runs)
        return Goal(key, text, target, at_least, unit, section.statistic, best, median)

    if "submit" in sections:
        peer = next(r for r in sections["submit"].rows if r.name.endswith(".apply_async"))
        text = f"Pool.submit tasks/s vs {peer.name}"
        goals.append(ratio_goal("submit", peer, text, SUBMIT_GOAL))
    if "map" in sections:
        peer = next(r for r in sections["map"].rows if r.name.startswith("multiprocessing.Pool"))
        text = f"fj.map (auto) items/s vs {peer.name}"
        goals.append(ratio_goal("map", peer, text, MAP_GOAL))
    if "cpu" in sections:
        goals.append(figure_goal("cpu", "fj.map busy fraction, CPU-bound", BUSY_GOAL, True, ""))
    if "cold" in sections:
        text = "cold start -> first fj.map result"
        goals.append(figure_goal("cold", text, COLD_START_GOAL_MS, False, "ms"))
    if "warm" in sections:
        text = "second call -> first fj.imap result"
        goals.append(figure_goal("warm", text, WARM_CALL_GOAL_MS, False, "ms"))
    if "eventlog" in sections:
        extra = sections["eventlog"].rows[0].extra
        text = "event log cost / one Pool.submit task's time"
        goals.append(
            Goal(
                "eventlog",
                text,
                EVENTLOG_GOAL_PERCENT,
                False,
                "%",
                "best",
                extra.get("percent_best"),
                extra.get("percent_median"),
                strict=True,
            )
        )
    return goals


def git_commit() -> str | None:
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=HERE,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "src"],
            cwd=HERE.parent,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{head}{'+dirty-src' if dirty else ''}" if head else None


def metadata(settings: Settings, quick: bool) -> dict[str, Any]:
    import multiprocessing

    import forkjoin

    versions = {"forkjoin": forkjoin.__version__}
    try:
        import joblib

        versions["joblib"] = joblib.__version__
    except ImportError:
        pass
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus_usable": cpus,
        "workers": WORKERS,
        "mp_start_method": multiprocessing.get_start_method(),
        "versions": versions,
        "git": git_commit(),
        "quick": quick,
        "settings": asdict(settings),
        "loadavg_start": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


# -- main ----------------------------------------------------------------------------------------


# Cold starts run first, while nothing else of ours is running; the event log's cost is put
# against the per-task time that the submit section measured, so it runs after that.
RUN_ORDER = ("cold", "submit", "map", "cpu", "warm", "eventlog")
BENCHES: dict[str, Callable[[Settings, Clock, Log], Section]] = {
    "cold": bench_cold,
    "submit": bench_submit,
    "map": bench_map,
    "cpu": bench_cpu,
    "warm": bench_warm,
}


def run(settings: Settings, only: Sequence[str], clock: Clock, log: Log) -> list[Section]:
    """The sections named in ``only``, in display order."""
    done: dict[str, Section] = {}
    for key in RUN_ORDER:
        if key not in only:
            continue
        if key == "eventlog":
            submit = done.get("submit")
            row = submit.row(submit.reference) if submit else None
            done[key] = bench_eventlog(settings, clock, log, row)
        else:
            done[key] = BENCHES[key](settings, clock, log)
    return [done[key] for key in SECTIONS if key in done]


def main(
    argv: Sequence[str] | None = None, console: Any = None, clock: Clock = time.perf_counter
) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller runs, ~1 minute")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON, help="where to write results")
    parser.add_argument(
        "--only", default=",".join(SECTIONS), help=f"comma-separated subset of {','.join(SECTIONS)}"
    )
    parser.add_argument("--check", action="store_true", help="exit 1 if a goal is missed")
    args = parser.parse_args(argv)
    only = [key.strip() for key in args.only.split(",") if key.strip()]
    unknown = set(only) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown section(s) {sorted(unknown)}; choose from {', '.join(SECTIONS)}")
    settings = QUICK if args.quick else FULL
    console = console or make_console()
    started = clock()

    def log(message: str) -> None:
        console.print(f"[{clock() - started:6.1f}s] {message}", style="dim")

    meta = metadata(settings, args.quick)
    load = meta["loadavg_start"]
    if load and load[0] > 0.5 * meta["cpus_usable"]:
        log(f"note: load average {load[0]:.2f} on {meta['cpus_usable']} cpus: expect noisy figures")
    sections = run(settings, only, clock, log)
    goals = evaluate_goals({s.key: s for s in sections})
    meta["seconds_total"] = clock() - started
    meta["loadavg_end"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    return publish(meta, sections, goals, console, args.json, args.check)


if __name__ == "__main__":
    sys.exit(main())
