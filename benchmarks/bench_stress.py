"""The stress run as a benchmark: 1M trivial tasks on 2 workers, a worker SIGKILLed every second.

    python benchmarks/bench_stress.py [--quick] [--rounds N] [--json PATH] [--no-peers] [--check]

Per round, one ``forkjoin.bench.stress`` call: the same 1M tasks fault-free, then with a worker
killed from outside every second, on one warm 2-worker pool; every result is checked against a
serial reference (lost, duplicated, wrong), the caller's RSS is sampled every 0.1 s, and after
close no process or shared-memory segment may remain. The goal (issue 8): zero loss, within 1.5x
the fault-free time, peak RSS flat.

Peer, same tasks and kills: ``concurrent.futures.ProcessPoolExecutor`` (the kill breaks the
pool: every result not yet returned is lost). ``multiprocessing.Pool`` is not run: after a
worker is SIGKILLed its map never returns and even ``Pool.terminate()`` can hang (seen here on
CPython 3.11), which would leave this benchmark's processes behind.
Time figures keep the median round (a one-off kill cost is what a user sees); every round is in
the JSON. ``--check`` exits 1 if a goal is missed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import signal
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from _report import Goal, Row, Section, footer, make_console, render  # noqa: E402

DEFAULT_JSON = HERE / "results" / "bench_stress.json"
TASKS = 1_000_000
QUICK_TASKS = 200_000
WORKERS = 2
KILL_EVERY = 1.0  # seconds between SIGKILLs of a random worker
SLOWDOWN_GOAL = 1.5  # faulted time <= 1.5x fault-free (issue 8)
RSS_GROWTH_GOAL_MIB = 16.0  # caller RSS growth over the second half of the faulted run
PEER_CHUNKSIZE = 10_000  # peers need an explicit chunksize for 1M tiny tasks
PEER_TIMEOUT = 60.0  # seconds a peer may go without a result before it counts as hung


def trivial(x: int) -> int:
    return x * 2 + 1


def _pairs(tasks: int) -> Any:
    return ((i, i) for i in range(tasks))


def _plain() -> Any:
    """The stress run's task wrapper without faults, so peers move the same (index, item)
    pairs forkjoin does."""
    from forkjoin.bench.stress import Faulty

    return Faulty(trivial, {})


PLAIN: Any = None


def _killer(pids: Any, stop: threading.Event, every: float, seed: int) -> list[int]:
    killed: list[int] = []
    rng = random.Random(seed)

    def run() -> None:
        while not stop.wait(every):
            alive = list(pids())
            if alive:
                pid = rng.choice(alive)
                try:
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
                except ProcessLookupError:
                    pass

    threading.Thread(target=run, name="bench-killer", daemon=True).start()
    return killed


def peer_futures(tasks: int) -> dict[str, Any]:
    """ProcessPoolExecutor.map under the same kills: how many results survive."""
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    got = 0
    error = ""
    start = time.perf_counter()
    pool = ProcessPoolExecutor(WORKERS)
    stop = threading.Event()
    killed = _killer(lambda: list(pool._processes or {}), stop, KILL_EVERY, 1)
    try:
        # A SIGKILLed worker can leave ProcessPoolExecutor waiting for ever (CPython issue:
        # the broken-pool detection races the result queue), so the wait is bounded.
        for _ in pool.map(PLAIN, _pairs(tasks), chunksize=PEER_CHUNKSIZE, timeout=PEER_TIMEOUT):
            got += 1
    except BrokenProcessPool as exc:
        error = f"BrokenProcessPool: {str(exc)[:60]}"
    except TimeoutError:
        error = f"hung: no result for {PEER_TIMEOUT:g} s after a kill"
    finally:
        stop.set()
        processes = list((pool._processes or {}).values())
        pool.shutdown(wait=False, cancel_futures=True)
        for process in processes:
            process.kill()
            process.join(5)
    return {"seconds": time.perf_counter() - start, "done": got, "lost": tasks - got,
            "killed": len(killed), "error": error}  # fmt: skip


def _second_half_growth(samples: list[tuple[float, int]]) -> float:
    """MiB the caller's RSS grew from the middle of the run to its peak after that: bounded
    buffers (the event log's ring, the in-flight window) fill early; growth that goes on in
    the second half would grow with the task count."""
    if len(samples) < 4:
        return 0.0
    middle = len(samples) // 2
    return max(0.0, (max(m for _, m in samples[middle:]) - samples[middle][1]) / 2**20)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_TASKS:,} tasks, 1 round")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON)
    parser.add_argument("--no-peers", action="store_true")
    parser.add_argument("--check", action="store_true", help="exit 1 if a goal is missed")
    args = parser.parse_args(argv)
    tasks = QUICK_TASKS if args.quick else TASKS
    rounds = args.rounds or (1 if args.quick else 3)

    from forkjoin.bench.stress import stress

    global PLAIN
    PLAIN = _plain()
    console = make_console()
    load_start = os.getloadavg()
    started = time.perf_counter()
    reports = []
    for round_number in range(rounds):
        report = stress(
            trivial, range(tasks), workers=WORKERS, kill_every=KILL_EVERY, retries=10,
            time_limit=600, seed=round_number,
        )  # fmt: skip
        reports.append(report)
        print(f"round {round_number + 1}/{rounds}: {report.seconds:.2f} s vs "
              f"{report.fault_free_seconds:.2f} s fault-free, lost {report.lost}, killed "
              f"{report.workers_killed}", flush=True)  # fmt: skip
    clean = [r.fault_free_seconds or 0.0 for r in reports]
    faulted = [r.seconds for r in reports]
    slowdowns = [r.slowdown or 0.0 for r in reports]
    growth = [_second_half_growth(r.rss_samples) for r in reports]
    median_report = sorted(reports, key=lambda r: r.slowdown or 0.0)[len(reports) // 2]

    section = Section(
        key="stress", title=f"{tasks:,} trivial tasks on {WORKERS} workers, seconds (lower is "
        f"better); faulted runs: a worker SIGKILLed every {KILL_EVERY:g} s",
        unit="s", higher_is_better=False, statistic="median", reference="forkjoin fault-free",
        params={"tasks": tasks, "workers": WORKERS, "kill_every": KILL_EVERY, "rounds": rounds},
    )  # fmt: skip
    section.rows.append(Row("forkjoin fault-free", statistics.median(clean), clean,
                            "same pool, no kills"))  # fmt: skip
    section.rows.append(Row(
        "forkjoin, worker killed every 1 s", statistics.median(faulted), faulted,
        f"lost {sum(r.lost for r in reports)}, duplicated {sum(r.duplicated for r in reports)}, "
        f"wrong {sum(r.wrong for r in reports)}, killed "
        f"{sum(r.workers_killed for r in reports)}, orphans "
        f"{sum(len(r.orphans) for r in reports)}, leaked shm "
        f"{sum(len(r.leaked_shm) for r in reports)}",
        extra={"reports": [r.as_dict() for r in reports]},
    ))  # fmt: skip
    peers: dict[str, Any] = {}
    if not args.no_peers:
        for name, fn in (("concurrent.futures.ProcessPoolExecutor", peer_futures),):
            result = fn(tasks)
            peers[name] = result
            section.rows.append(Row(
                f"{name}, same kills", result["seconds"], [result["seconds"]],
                f"done {result['done']:,}, LOST {result['lost']:,}; {result['error'] or 'ok'}",
                extra=result, compared=False,
            ))  # fmt: skip
    section.notes.append(
        f"peak RSS (median round): caller {median_report.peak_rss_caller / 2**20:.1f} MiB, "
        f"workers {median_report.peak_rss_workers / 2**20:.1f} MiB; caller RSS growth over "
        f"the second half of the faulted run {statistics.median(growth):.1f} MiB"
    )
    section.notes.append(
        "caller RSS over the faulted run (s: MiB): " + ", ".join(
            f"{t:.1f}: {m / 2**20:.0f}" for t, m in median_report.rss_samples[:: max(
                1, len(median_report.rss_samples) // 8)]
        )
    )  # fmt: skip
    goals = [
        Goal("zero_loss", "no task lost, duplicated or wrong; nothing leaked", 0, False, "",
             "median", float(sum(not r.ok for r in reports)),
             float(sum(not r.ok for r in reports))),
        Goal("slowdown", "time with a worker killed every second / fault-free", SLOWDOWN_GOAL,
             False, "x", "median", min(slowdowns), statistics.median(slowdowns)),
        Goal("rss_flat", "caller RSS growth, 2nd half of the faulted run (MiB)",
             RSS_GROWTH_GOAL_MIB, False, "", "median", min(growth), statistics.median(growth)),
    ]  # fmt: skip
    render([section], goals, console)
    meta = {
        "python": platform.python_version(), "machine": platform.machine(),
        "cpus": os.cpu_count(), "loadavg_start": load_start, "loadavg_end": os.getloadavg(),
        "seconds_total": time.perf_counter() - started, "quick": args.quick,
    }  # fmt: skip
    from dataclasses import asdict

    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(
        {"meta": meta, "sections": {"stress": asdict(section)},
         "goals": [dict(asdict(g), met=g.met) for g in goals], "peers": peers},
        indent=2, default=str,
    ))  # fmt: skip
    console.print(footer(meta, load_start, args.json))
    if args.check and not all(g.met for g in goals):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
