"""The benchmark's harness: settings, round-robin timing, and pool housekeeping.

Shared by the section modules (``_throughput``, ``_latency``); ``bench_engine`` runs them.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

Clock = Callable[[], float]
Log = Callable[[str], None]
# A case runs once and returns (seconds, extra): what it measured and anything it wants kept.
Case = Callable[[Clock], tuple[float, Any]]

WORKERS = 2


@dataclass(frozen=True)
class Settings:
    """Sizes and repeat counts; ``QUICK`` trades precision for a ~1 minute run."""

    submit_tasks: int = 20_000
    submit_repeats: int = 5  # forkjoin and multiprocessing.Pool: the pair the goal compares
    submit_slow_repeats: int = 3  # ProcessPoolExecutor and joblib: ~5-10 s per run here
    map_items: int = 100_000
    map_repeats: int = 15  # ~30 ms a run: many runs are cheap and steady the best and the median
    map_slow_repeats: int = 3  # joblib: ~1 s a run
    chunksizes: tuple[int, ...] = (1_000, 5_000, 12_500, 25_000, 50_000)
    cpu_tasks: int = 16
    cpu_task_seconds: float = 0.25
    cpu_repeats: int = 3
    cold_repeats: int = 5
    warm_repeats: int = 30
    warm_items: int = 100
    eventlog_loops: int = 200_000
    eventlog_repeats: int = 5
    warmup_tasks: int = 200  # per pool, before timing: starts every worker, ships functions


FULL = Settings()
QUICK = Settings(
    submit_tasks=5_000,
    submit_repeats=3,
    submit_slow_repeats=2,
    map_repeats=5,
    map_slow_repeats=2,
    cpu_task_seconds=0.1,
    cpu_repeats=2,
    cold_repeats=3,
    warm_repeats=15,
    eventlog_loops=100_000,
    eventlog_repeats=3,
)


# -- measuring -----------------------------------------------------------------------------------


def timed(fn: Callable[[], Any]) -> Case:
    """A case that times one call of ``fn`` and keeps its return value as the extra."""

    def case(clock: Clock) -> tuple[float, Any]:
        start = clock()
        value = fn()
        return clock() - start, value

    return case


def round_robin(
    cases: dict[str, Case],
    repeats: int | dict[str, int],
    clock: Clock,
    alternate: bool = False,
) -> dict[str, list[tuple[float, Any]]]:
    """Run every case ``repeats`` times, taking turns: round 1 runs each case once, then round 2.

    ``repeats`` may differ per case; a case drops out of the rounds once it has its runs.
    ``alternate`` runs the cases in reverse order every other round, so that a case that warms
    or tires the machine for the next one favours neither side of an on/off pair.
    """
    wanted = repeats if isinstance(repeats, dict) else dict.fromkeys(cases, repeats)
    samples: dict[str, list[tuple[float, Any]]] = {name: [] for name in cases}
    order = list(cases.items())
    for round_number in range(max(wanted.values(), default=0)):
        turn = order[::-1] if alternate and round_number % 2 else order
        for name, case in turn:
            if round_number < wanted[name]:
                samples[name].append(case(clock))
    return samples


def submit_and_gather(
    submit: Callable[..., Any], fn: Callable[[Any], Any], count: int
) -> list[Any]:
    """Submit ``fn(i)`` for i in range(count) through an Executor-style ``submit``, then gather:
    how the submit sections time forkjoin's Pool, ProcessPoolExecutor and the like."""
    futures = [submit(fn, i) for i in range(count)]
    return [future.result() for future in futures]


def apply_async_and_gather(mp_pool: Any, fn: Callable[[Any], Any], count: int) -> list[Any]:
    """The same for ``multiprocessing.Pool.apply_async``."""
    handles = [mp_pool.apply_async(fn, (i,)) for i in range(count)]
    return [handle.get() for handle in handles]


def paired_ratio(on: Sequence[float], off: Sequence[float]) -> float:
    """The median of the round-by-round ratios on/off. ``round_robin`` runs a pair back to back,
    so load elsewhere on a shared machine moves both alike: steadier than a ratio of bests."""
    return statistics.median(a / b for a, b in zip(on, off, strict=True))


def progress_log(console: Any, clock: Clock = time.perf_counter, style: str | None = None) -> Log:
    """A ``log(message)`` that prints seconds since its creation before each message."""
    started = clock()

    def log(message: str) -> None:
        console.print(f"[{clock() - started:6.1f}s] {message}", style=style)

    return log


def calibrate_spin(target_seconds: float, cpu_time: bool = False) -> int:
    """The ``spin`` step count that takes ``target_seconds`` here (best of 2, up to 6 tries).

    ``cpu_time``: seconds of CPU rather than of wall time. On a machine shared with other jobs
    a wall-time calibration gives tasks a fraction of the asked work (the process waits for a
    core), and a fixed per-call cost then looks several times larger than it is.
    """
    from _workloads import spin

    def timed_spin(steps: int) -> float:
        if not cpu_time:
            return spin(steps)
        start = time.thread_time()
        spin(steps)
        return time.thread_time() - start

    steps = 100_000
    for _ in range(6):
        seconds = min(timed_spin(steps) for _ in range(2))
        steps = max(1, int(steps * target_seconds / max(seconds, 1e-6)))
        if abs(seconds - target_seconds) < 0.05 * target_seconds:
            break
    return steps


def check_equal(name: str, got: Any, expected: Any) -> None:
    """A benchmark of wrong answers is worthless: stop at once if a contender returns one."""
    if got != expected:
        shown = repr(got)[:200]
        raise AssertionError(f"{name} returned a wrong result: {shown}")


def shutdown_shared() -> None:
    """Stop forkjoin's shared pools and joblib's reusable executor (each section starts clean)."""
    from forkjoin.engine.api import shared_pools

    shared_pools.shutdown()
    try:
        from joblib.externals.loky import get_reusable_executor
    except ImportError:
        return
    get_reusable_executor().shutdown(wait=True)


def wait_until_ready(stats: Callable[[], Any], timeout: float = 60.0) -> None:
    """Block until every forkjoin worker has said it is ready.

    A short warm-up job can finish on the first worker before the second is up; "warm pool" here
    means every worker is running, as the peers' warm-ups guarantee for them.
    """
    deadline = time.monotonic() + timeout
    while stats().workers_started < WORKERS:
        if time.monotonic() > deadline:
            raise RuntimeError(f"forkjoin workers not ready after {timeout:g} s")
        time.sleep(0.01)


def shared_pool_stats() -> Any:
    """Stats of the shared pool that ``fj.map(..., workers=WORKERS)`` runs on."""
    from forkjoin.engine.api import shared_pools

    return shared_pools.get("process", WORKERS)[1].stats()


def have_joblib() -> bool:
    try:
        import joblib  # noqa: F401
    except ImportError:
        return False
    return True


def mp_label() -> str:
    import multiprocessing

    return f"multiprocessing.Pool ({multiprocessing.get_start_method()})"


# -- contenders in fresh interpreters (bench_shuffle; bench_data and bench_inference can share) ---

RSS_SAMPLE_SECONDS = 0.1


def tree_rss(pid: int) -> int:
    """Resident bytes of a process and all its descendants now (0 if it is gone)."""
    import psutil

    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0
    total = 0
    for proc in procs:
        try:
            total += proc.memory_info().rss
        except psutil.Error:
            pass
    return total


def tree_pss(pid: int) -> int:
    """Proportional set size of a process tree now: each shared page (a library's code that
    every worker maps, a forked parent's pages) counted once across the tree rather than once
    per process, as a sum of RSS does. Linux only (``/proc/PID/smaps_rollup``); 0 elsewhere."""
    import psutil

    try:
        root = psutil.Process(pid)
        pids = [pid, *(child.pid for child in root.children(recursive=True))]
    except psutil.Error:
        return 0
    total = 0
    for each in pids:
        try:
            with open(f"/proc/{each}/smaps_rollup") as handle:
                for line in handle:
                    if line.startswith("Pss:"):
                        total += int(line.split()[1]) * 1024
                        break
        except OSError:
            pass
    return total


def run_measured(command: list[str], timeout: float) -> dict[str, Any]:
    """Run ``command`` (a contender in a fresh interpreter, its own session, killed whole at
    the end) and return the last JSON line it printed plus ``peak_rss``, the peak resident bytes
    of its process tree (sampled every RSS_SAMPLE_SECONDS), and ``peak_pss``, the same for its
    proportional set size (shared pages counted once: what the tree takes from the machine). On
    failure: ``{"error": [last lines of stderr], "peak_rss": ...}``, so a contender that fails
    or runs out of memory is a row that says so."""
    import json
    import os
    import signal
    import subprocess
    import threading

    env = {**os.environ, "PYTHONWARNINGS": "ignore", "RAY_DEDUP_LOGS": "0"}
    proc = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,
    )
    peak = peak_pss = 0
    done = threading.Event()

    def sample() -> None:
        nonlocal peak, peak_pss
        while not done.wait(RSS_SAMPLE_SECONDS):
            peak = max(peak, tree_rss(proc.pid))
            peak_pss = max(peak_pss, tree_pss(proc.pid))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        stdout, stderr = "", f"timed out after {timeout:.0f} s"
    finally:
        done.set()
        sampler.join()
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # anything the contender left behind
        except ProcessLookupError:
            pass
        proc.wait()
    lines = [line for line in stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        why = (stderr or stdout).strip().splitlines()[-3:] or [f"exit status {proc.returncode}"]
        if proc.returncode == -signal.SIGKILL:
            why.append("(SIGKILL: out of memory?)")
        return {"error": why, "peak_rss": peak}
    result: dict[str, Any] = json.loads(lines[-1])
    result["peak_rss"] = peak
    result["peak_pss"] = peak_pss
    return result


def library_versions(modules: tuple[str, ...]) -> dict[str, str | None]:
    """``{module: __version__ or None}`` for a benchmark's JSON metadata."""
    versions: dict[str, str | None] = {}
    for module in modules:
        try:
            versions[module] = __import__(module).__version__
        except ImportError:
            versions[module] = None
    return versions
