"""What watching costs: the live dashboard and the profiler, on and off, side by side in one run.

    python benchmarks/bench_observe.py [--quick] [--json PATH] [--check]

    submit   trivial tasks through Pool.submit, then gather: a pool without a dashboard,    tasks/s
             one with the dashboard up and its state fetched twice a second by another
             process (the page fetches once), one with profile=True;
             multiprocessing.Pool.apply_async for scale
    cpu      16 pure-Python tasks of ~0.25 s of CPU with fj.map: profile off, profile on    seconds
             (speedscope JSON written each run); multiprocessing.Pool.map for scale

Goals (forkjoin issue 20): the dashboard costs < 2% of Pool.submit throughput; profile=True
costs <= 5% on the CPU-bound map. Contenders take turns within each round (round-robin, the
order reversed every other round); each goal is judged on the median of the per-round on/off
ratios (a pair runs back to back, so load elsewhere on this shared machine moves both alike),
the ratio of best runs shown beside it. Every run is in the JSON.
"""

from __future__ import annotations

import argparse
import functools
import json
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
    sys.path.insert(0, str(HERE))

from _harness import (  # noqa: E402
    WORKERS,
    Case,
    Clock,
    Log,
    apply_async_and_gather,
    calibrate_spin,
    check_equal,
    mp_label,
    paired_ratio,
    progress_log,
    round_robin,
    shutdown_shared,
    submit_and_gather,
    timed,
    wait_until_ready,
)
from _report import Goal, Row, Section, make_console, publish  # noqa: E402
from _workloads import identity, spin  # noqa: E402
from bench_engine import metadata  # noqa: E402

DEFAULT_JSON = HERE / "results" / "bench_observe.json"
DASHBOARD_GOAL = 0.98  # Pool.submit with the dashboard on >= 98% of its throughput off
PROFILE_GOAL = 1.05  # fj.map with profile=True <= 1.05x its time off, CPU-bound
POLL_SECONDS = 0.5  # how often the benchmark's "browser" fetches the state (the page: 1 s)

OFF = "Pool.submit, dashboard off"
ON = "Pool.submit, dashboard on (polled)"
PROFILED_SUBMIT = "Pool.submit, profile=True"
MAP_OFF = "fj.map, profile off"
MAP_ON = "fj.map, profile=True"


@dataclass(frozen=True)
class ObserveSettings:
    submit_tasks: int = 5_000
    submit_repeats: int = 15  # dashboard off / on, alternating: pairs enough to resolve 2% quiet
    submit_other_repeats: int = 3  # profile=True and multiprocessing, for scale
    cpu_tasks: int = 16
    cpu_task_seconds: float = 0.25
    cpu_repeats: int = 5  # profile off / on, alternating
    cpu_other_repeats: int = 1  # multiprocessing, for scale
    warmup_tasks: int = 200


FULL = ObserveSettings()
QUICK = ObserveSettings(
    submit_tasks=5_000, submit_repeats=5, submit_other_repeats=3, cpu_task_seconds=0.1,
    cpu_repeats=3, cpu_other_repeats=2,
)  # fmt: skip


# A browser tab left open, in its own process as a browser would be: it fetches the state at
# once and then every POLL_SECONDS while told to ("1" on stdin), pauses on "0", ends when
# stdin closes.
_POLLER = """
import sys, threading, urllib.request
url, period = sys.argv[1], float(sys.argv[2])
polling, stop = threading.Event(), threading.Event()
def commands():
    for line in sys.stdin:
        (polling.set if line.strip() == "1" else polling.clear)()
        print("ok", flush=True)
    stop.set()
    polling.set()
threading.Thread(target=commands, daemon=True).start()
while True:
    polling.wait()
    if stop.is_set():
        break
    with urllib.request.urlopen(url, timeout=10) as reply:  # at once: a short run gets one too
        reply.read()
    stop.wait(period)
"""


class Poller:
    """Fetches the dashboard's state like a browser tab left open, from another process, only
    while the pool it watches is being measured (``polling()``): the other contenders' runs
    share this process, and must not pay for the page."""

    def __init__(self, url: str) -> None:
        state_url = url.replace("/?token=", "/api/state?token=")
        self._process = subprocess.Popen(
            [sys.executable, "-c", _POLLER, state_url, str(POLL_SECONDS)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip

    def _say(self, command: str) -> None:
        assert self._process.stdin is not None and self._process.stdout is not None
        self._process.stdin.write(command + "\n")
        self._process.stdin.flush()
        self._process.stdout.readline()  # "ok": the poller has switched

    def polling(self, fn: Callable[[], Any]) -> Callable[[], Any]:
        def run() -> Any:
            self._say("1")
            try:
                return fn()
            finally:
                self._say("0")

        return run

    def stop(self) -> None:
        assert self._process.stdin is not None
        self._process.stdin.close()
        try:
            self._process.wait(15)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()


def _cpu_seconds(pids: Callable[[], list[int]] | None) -> float:
    import psutil

    total = time.process_time()  # every thread of this process: a dashboard's server too
    for pid in pids() if pids else ():
        try:
            times = psutil.Process(pid).cpu_times()
        except psutil.Error:
            continue
        total += times.user + times.system
    return total


def cpu_timed(fn: Callable[[], Any], pids: Callable[[], list[int]] | None = None) -> Case:
    """A case that times one call of ``fn``, keeping (its value, CPU seconds of this process
    and of the worker processes ``pids`` names). On a loaded machine, CPU time is far steadier
    than wall time; what watching costs (the dashboard's server thread, the samplers) is CPU."""

    def case(clock: Clock) -> tuple[float, Any]:
        cpu = _cpu_seconds(pids)
        start = clock()
        value = fn()
        seconds = clock() - start
        return seconds, (value, _cpu_seconds(pids) - cpu)

    return case


_tick_ms = 0.0


def _state_cost_ms(pool: Any, calls: int = 30) -> float:
    """CPU time of one state request and one tick, measured directly: on a loaded machine
    this is steadier than the throughput ratio (reaches into the pool's observer)."""
    global _tick_ms
    view = pool._observer.dashboard.view
    start = time.thread_time()
    for _ in range(calls):
        view.tick()
    _tick_ms = 1e3 * (time.thread_time() - start) / calls
    start = time.thread_time()
    for _ in range(calls):
        json.dumps(view.state())
    return 1e3 * (time.thread_time() - start) / calls


def bench_submit(settings: ObserveSettings, clock: Clock, log: Log) -> Section:
    import multiprocessing

    import forkjoin as fj

    n = settings.submit_tasks
    expected = list(range(n))
    mp_pool = multiprocessing.Pool(WORKERS)  # first: fork before the other pools start threads
    plain = fj.Pool(WORKERS)
    watched = fj.Pool(WORKERS, dashboard=True)
    profiled = fj.Pool(WORKERS, profile=True)
    assert watched.dashboard_url is not None
    poller = Poller(watched.dashboard_url)
    try:
        mp_name = f"{mp_label()}.apply_async"
        runners: dict[str, Callable[[int], list[Any]]] = {
            OFF: functools.partial(submit_and_gather, plain.submit, identity),
            ON: functools.partial(submit_and_gather, watched.submit, identity),
            PROFILED_SUBMIT: functools.partial(submit_and_gather, profiled.submit, identity),
            mp_name: functools.partial(apply_async_and_gather, mp_pool, identity),
        }
        log(f"submit: warming {len(runners)} pools")
        for pool in (plain, watched, profiled):
            submit_and_gather(pool.submit, identity, settings.warmup_tasks)
            wait_until_ready(pool.stats)
        for name, run in runners.items():
            check_equal(name, run(settings.warmup_tasks), list(range(settings.warmup_tasks)))
        # The pair the goal compares runs every round, in alternating order; the others fewer.
        repeats = {name: settings.submit_repeats for name in runners}
        repeats[PROFILED_SUBMIT] = repeats[mp_name] = settings.submit_other_repeats
        log(f"submit: {n} tasks x {settings.submit_repeats} rounds")
        runners[ON] = poller.polling(
            functools.partial(submit_and_gather, watched.submit, identity, n)
        )
        cases = {
            name: cpu_timed(run if name == ON else functools.partial(run, n))
            for name, run in runners.items()
        }  # fmt: skip
        samples = round_robin(cases, repeats, clock, alternate=True)
        fetches = watched._observer.dashboard.state_requests
        state_ms = _state_cost_ms(watched)
    finally:
        poller.stop()
        for pool in (plain, watched, profiled):
            pool.shutdown()
        mp_pool.terminate()
        mp_pool.join()
        shutdown_shared()
    section = Section(
        key="submit",
        title=f"1. submit {n:,} trivial tasks, then gather (warm pools, {WORKERS} workers)",
        unit="tasks/s",
        higher_is_better=True,
        statistic="best",
        reference=OFF,
        params={"tasks": n, "repeats": repeats, "poll_seconds": POLL_SECONDS},
        notes=[
            f"the dashboard's state was fetched {fetches} times, by a poller in another "
            f"process (as a browser tab would), only during the dashboard-on runs",
            f"building it costs {state_ms:.2f} ms of the caller's CPU (a full timeline), a "
            f"tick {_tick_ms:.3f} ms: at the page's 1 fetch/s, "
            f"{(state_ms + _tick_ms) / 10:.2f}% of one core",
        ],
    )
    for name, runs in samples.items():
        for _, (value, _cpu) in runs:
            check_equal(name, value, expected)
        rates = [n / seconds for seconds, _ in runs]
        cpu_us = [1e6 * cpu / n for _, (_, cpu) in runs]
        section.rows.append(Row(
            name, max(rates), rates,
            f"median {statistics.median(rates):,.0f}/s; caller CPU "
            f"{statistics.median(cpu_us):.1f} us/task",
            {"caller_cpu_us_per_task": cpu_us}, compared=name != OFF,
        ))  # fmt: skip
    return section


def bench_cpu(settings: ObserveSettings, clock: Clock, log: Log) -> Section:
    import multiprocessing

    import forkjoin as fj

    steps = calibrate_spin(settings.cpu_task_seconds, cpu_time=True)
    tasks = [steps] * settings.cpu_tasks
    log(f"cpu: {settings.cpu_tasks} tasks of {steps:,} steps (~{settings.cpu_task_seconds} s)")
    mp_pool = multiprocessing.Pool(WORKERS)
    folder = tempfile.TemporaryDirectory(prefix="fj-bench-observe-")
    target = str(Path(folder.name) / "cpu.speedscope.json")
    try:
        fj.map(spin, [1_000] * settings.warmup_tasks, workers=WORKERS)  # start, ship spin
        mp_pool.map(spin, [1_000] * settings.warmup_tasks)
        from forkjoin.engine.api import shared_pools

        def pids() -> list[int]:  # fj.map's shared pool (warm): the workers whose CPU counts
            return shared_pools._pools["process"][1].worker_pids()

        cases = {
            MAP_OFF: cpu_timed(lambda: fj.map(spin, tasks, workers=WORKERS), pids),
            MAP_ON: cpu_timed(lambda: fj.map(spin, tasks, workers=WORKERS, profile=target), pids),
            f"{mp_label()}.map": timed(lambda: (mp_pool.map(spin, tasks), 0.0)),
        }
        log(f"cpu: {len(cases)} cases x {settings.cpu_repeats} rounds")
        repeats = dict.fromkeys(cases, settings.cpu_repeats)
        repeats[f"{mp_label()}.map"] = settings.cpu_other_repeats
        samples = round_robin(cases, repeats, clock, alternate=True)
        from forkjoin.observe.runs import last_profile

        profile = last_profile()
        share = profile.share("spin", of="user") if profile else 0.0
        cost = profile.sampler_cpu_seconds / profile.total_seconds if profile else 0.0
    finally:
        mp_pool.terminate()
        mp_pool.join()
        shutdown_shared()
        folder.cleanup()
    section = Section(
        key="cpu",
        title=f"2. CPU-bound fj.map: {settings.cpu_tasks} tasks of ~{settings.cpu_task_seconds} s",
        unit="s",
        higher_is_better=False,
        statistic="best",
        reference=MAP_OFF,
        params={"tasks": settings.cpu_tasks, "steps": steps, "repeats": repeats},
        notes=[
            f"the last profile put {100 * share:.0f}% of user time in spin()",
            f"its samplers used {100 * cost:.2f}% of the sampled worker time as CPU (steadier "
            f"than the wall-time ratio on a loaded machine)",
        ],
    )
    for name, runs in samples.items():
        seconds = [s for s, _ in runs]
        cpu = [c for _, (_, c) in runs]
        detail = f"median {statistics.median(seconds):.3f} s"
        if any(cpu):
            detail += f"; CPU (caller + workers) {statistics.median(cpu):.3f} s"
        section.rows.append(Row(
            name, min(seconds), seconds, detail, {"cpu_seconds": cpu}, compared=name != MAP_OFF,
        ))  # fmt: skip
    return section


def _paired(on: Row, off: Row) -> float:
    """The median of the round-by-round ratios on/off (the ratio of bests is shown beside it)."""
    return paired_ratio(on.runs[: len(off.runs)], off.runs[: len(on.runs)])


def _cpu_goal(key: str, text: str, target: float, on: Row, off: Row, name: str) -> Goal:
    """The same comparison on CPU seconds (lower is better), paired by round."""
    on_cpu, off_cpu = on.extra[name], off.extra[name]
    best = min(on_cpu) / min(off_cpu)
    return Goal(key, text, target, False, "x", "median", best, paired_ratio(on_cpu, off_cpu))


def evaluate_goals(sections: dict[str, Section]) -> list[Goal]:
    """Each goal twice: on wall time, as the issue words it, and on CPU time, which load on a
    shared machine barely moves (the wall-time figures need a quiet one to resolve 2%)."""
    goals = []
    if "submit" in sections:
        s = sections["submit"]
        off, on = s.row(OFF), s.row(ON)
        text = "Pool.submit throughput, dashboard on / off (paired by round)"
        goals.append(
            Goal("submit", text, DASHBOARD_GOAL, True, "x", "median", on.value / off.value,
                 _paired(on, off))
        )  # fmt: skip
        if "caller_cpu_us_per_task" in on.extra:
            text = "caller CPU per submitted task, dashboard on / off (paired)"
            goals.append(_cpu_goal("submit_cpu", text, 1 / DASHBOARD_GOAL, on, off,
                                   "caller_cpu_us_per_task"))  # fmt: skip
    if "cpu" in sections:
        s = sections["cpu"]
        off, on = s.row(MAP_OFF), s.row(MAP_ON)
        text = "CPU-bound fj.map time, profile=True / off (paired by round)"
        goals.append(
            Goal("cpu", text, PROFILE_GOAL, False, "x", "median", on.value / off.value,
                 _paired(on, off))
        )  # fmt: skip
        if "cpu_seconds" in on.extra:
            text = "CPU (caller + workers) per CPU-bound fj.map, profile=True / off (paired)"
            goals.append(_cpu_goal("cpu_cpu", text, PROFILE_GOAL, on, off, "cpu_seconds"))
    return goals


SECTIONS = {"submit": bench_submit, "cpu": bench_cpu}


def main(argv: Sequence[str] | None = None, console: Any = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller runs, ~1 minute")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON, help="where to write results")
    parser.add_argument("--only", default=",".join(SECTIONS), help="submit,cpu")
    parser.add_argument("--check", action="store_true", help="exit 1 if a goal is missed")
    args = parser.parse_args(argv)
    settings = QUICK if args.quick else FULL
    console = console or make_console()
    clock = time.perf_counter
    started = clock()
    log = progress_log(console, clock, style="dim")
    meta = metadata(settings, args.quick)  # type: ignore[arg-type]  (any dataclass will do)
    only = [key.strip() for key in args.only.split(",") if key.strip()]
    sections = [SECTIONS[key](settings, clock, log) for key in SECTIONS if key in only]
    goals = evaluate_goals({s.key: s for s in sections})
    meta["seconds_total"] = clock() - started
    meta["loadavg_end"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    return publish(meta, sections, goals, console, args.json, args.check)


if __name__ == "__main__":
    sys.exit(main())
