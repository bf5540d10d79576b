"""The out-of-band threshold sweep: which payload size should go through shared memory?

``bench_dataplane.py --threshold`` runs this file once per threshold, in a fresh interpreter with
``FORKJOIN_OUT_OF_BAND_MIN_BYTES`` set (forkjoin is to read it at import, in the caller and in
every worker)::

    FORKJOIN_OUT_OF_BAND_MIN_BYTES=65536 python _dataplane_threshold.py --sizes 16384,65536 ...

It echoes arrays of each payload size (the task returns its argument, so the payload crosses both
ways), one item per task (``chunksize=1``, as ``Pool.submit`` does), and prints
``RESULT {...}``: tasks/s run by run for every size, and the threshold that the caller and a
worker actually used. Where forkjoin does not read the variable itself, the sweep sets the
module constant in the caller and (by a pool initializer) in every worker, and says so.

A buffer of ``threshold`` bytes or more travels in shared memory; a smaller one goes through the
socket inside the message.
"""

from __future__ import annotations

import argparse
import faulthandler
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ENV = "FORKJOIN_OUT_OF_BAND_MIN_BYTES"
INLINE = 10**12  # a threshold no payload reaches: everything through the socket
HANG_EXIT = 75  # the child's exit status when a run hung (see ``hang_timer``)


# -- the child: one threshold, every size --------------------------------------------------------


def hang_timer(seconds: float) -> threading.Timer:
    """Started, it dumps every thread's stack to stderr and exits with ``HANG_EXIT`` unless
    cancelled within ``seconds``: a run that takes that long has hung (a forkjoin bug), and the
    parent reports it."""

    def hung() -> None:
        faulthandler.dump_traceback(all_threads=True)
        os._exit(HANG_EXIT)

    timer = threading.Timer(seconds, hung)
    timer.daemon = True
    return timer


def child(sizes: Sequence[int], seconds: float, repeats: int, workers: int) -> dict[str, Any]:
    import numpy as np
    from _dataplane_workloads import apply_threshold_env, echo, noop, worker_threshold
    from _harness import wait_until_ready

    import forkjoin as fj
    from forkjoin.backends import buffers

    read_by_forkjoin = buffers.OUT_OF_BAND_MIN_BYTES  # what forkjoin made of the variable
    apply_threshold_env()  # in case it did not read it (then in every worker too)
    pool = fj.Pool(workers, initializer=apply_threshold_env)
    try:
        pool.map_list(noop, range(4 * workers))
        wait_until_ready(pool.stats)
        in_workers = set(pool.map_list(worker_threshold, range(4 * workers), chunksize=1))
        payloads = {size: np.arange(size // 8, dtype=np.float64) for size in sizes}

        def run(size: int, count: int) -> float:
            """Seconds for ``count`` echoes."""
            items = [payloads[size]] * count
            hang = hang_timer(max(60.0, 200 * seconds))
            hang.start()
            start = time.perf_counter()
            out = pool.map_list(echo, items, chunksize=1)
            elapsed = time.perf_counter() - start
            hang.cancel()
            if len(out) != count or not np.array_equal(out[-1], payloads[size]):
                raise AssertionError(f"echo of {size} bytes came back wrong")
            return elapsed

        tasks = {}
        for size in sizes:  # warm (segments pooled, pages touched), then size the runs
            run(size, 20)
            per_task = run(size, 40) / 40
            tasks[size] = int(min(20_000, max(40, seconds / per_task)))
        runs: dict[int, list[float]] = {size: [] for size in sizes}
        for _ in range(repeats):  # sizes take turns
            for size in sizes:
                runs[size].append(tasks[size] / run(size, tasks[size]))
    finally:
        pool.shutdown()
    return {
        "threshold_read_by_forkjoin": read_by_forkjoin,
        "threshold_caller": buffers.OUT_OF_BAND_MIN_BYTES,
        "threshold_workers": sorted(in_workers),
        "tasks": {str(size): n for size, n in tasks.items()},
        "rates": {str(size): r for size, r in runs.items()},
    }


# -- the parent: one child per threshold, then the verdict ---------------------------------------


ATTEMPTS = 3  # a child that fails is started again, this many times in all


def run_child(
    threshold: int, sizes: Sequence[int], seconds: float, repeats: int, workers: int, log: Any
) -> dict[str, Any]:
    """One threshold in a fresh interpreter. A child that fails (a hang or a crash: a forkjoin
    bug) is started again, up to ``ATTEMPTS`` times in all; the failures are kept in the result
    (``failures``) and shown with the table, and ``rates`` is missing if every attempt failed."""
    env = dict(os.environ)
    env[ENV] = str(threshold)
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--sizes",
        ",".join(map(str, sizes)),
        "--seconds",
        str(seconds),
        "--repeats",
        str(repeats),
        "--workers",
        str(workers),
    ]
    failures: list[str] = []
    for _ in range(ATTEMPTS):
        done = subprocess.run(command, capture_output=True, text=True, timeout=900, env=env)
        lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
        if done.returncode == 0 and lines:
            result: dict[str, Any] = json.loads(lines[-1][len("RESULT ") :])
            used = (result["threshold_caller"], result["threshold_workers"])
            if used != (threshold, [threshold]):
                raise RuntimeError(
                    f"{ENV}={threshold} was not honoured: caller used {used[0]}, workers {used[1]}"
                )
            result["failures"] = failures
            return result
        why = "hung" if done.returncode == HANG_EXIT else f"failed (exit {done.returncode})"
        failures.append(f"{why}:\n{done.stderr[-4000:]}")
        last = done.stderr.strip().splitlines()[-1:] or [""]
        log(f"threshold: the child {why}: {last[0][:120]}; attempt {len(failures) + 1}")
    return {"failures": failures}


def analyse(
    sizes: Sequence[int], thresholds: Sequence[int], best: dict[int, dict[int, float]]
) -> dict[str, Any]:
    """Per size: shared memory (thresholds <= size) against the socket (thresholds > size).

    Each side's figure is the median over its thresholds of their best runs (the thresholds on one
    side all do the same thing for that size: they are replicates, and a median does not favour
    the side that has more of them). The crossover is the smallest size from which shared memory
    wins at every larger size too.
    """
    per_size = {}
    for size in sizes:
        shm = [best[t][size] for t in thresholds if t <= size and size in best.get(t, {})]
        sock = [best[t][size] for t in thresholds if t > size and size in best.get(t, {})]
        entry: dict[str, Any] = {
            "shm": statistics.median(shm) if shm else None,
            "socket": statistics.median(sock) if sock else None,
        }
        entry["ratio"] = entry["shm"] / entry["socket"] if shm and sock else None
        per_size[size] = entry
    crossover = None
    for size in reversed(sizes):
        ratio = per_size[size]["ratio"]
        if ratio is None:
            continue
        if ratio <= 1.0:
            break
        crossover = size
    return {"per_size": {str(s): v for s, v in per_size.items()}, "crossover_bytes": crossover}


def sweep(
    sizes: Sequence[int],
    thresholds: Sequence[int],
    seconds: float,
    repeats: int,
    workers: int,
    log: Any,
) -> dict[str, Any]:
    results = {}
    best: dict[int, dict[int, float]] = {}
    for threshold in thresholds:
        shown = "inf" if threshold >= INLINE else str(threshold)
        log(f"threshold: {ENV}={shown}, {len(sizes)} sizes x {repeats} rounds, fresh interpreter")
        result = run_child(threshold, sizes, seconds, repeats, workers, log)
        results[str(threshold)] = result
        if "rates" in result:
            best[threshold] = {int(s): max(r) for s, r in result["rates"].items()}
    measured = {t: r for t, r in results.items() if "rates" in r}
    return {
        "env_read_by_forkjoin": all(
            int(t) == r["threshold_read_by_forkjoin"] for t, r in measured.items()
        ),
        "failed_attempts": {t: len(r["failures"]) for t, r in results.items()},
        "sizes": list(sizes),
        "thresholds": list(thresholds),
        "chunksize": 1,
        "run_seconds": seconds,
        "repeats": repeats,
        "best": {str(t): {str(s): v for s, v in by.items()} for t, by in best.items()},
        "median": {
            t: {s: statistics.median(r) for s, r in res["rates"].items()}
            for t, res in measured.items()
        },
        "runs": results,
        **analyse(sizes, thresholds, best),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="one threshold of the sweep (see module doc)")
    parser.add_argument("--sizes", required=True, help="comma-separated payload sizes, bytes")
    parser.add_argument("--seconds", type=float, default=0.3, help="rough length of each run")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",") if s]
    result = child(sizes, args.seconds, args.repeats, args.workers)
    print("RESULT " + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    if str(HERE) not in sys.path:
        sys.path.insert(0, str(HERE))
    sys.exit(main())
