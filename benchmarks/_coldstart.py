"""One cold start in a fresh interpreter: ``python _coldstart.py CONTENDER [WORKERS]``.

Prints ``RESULT {"import_s": ..., "first_s": ...}``: seconds from just before the library's import
to the end of that import, and to the first result of a one-item call (so pool start-up, worker
start-up and one round trip are all included). Interpreter start-up is not counted: it is the
same for every contender. The pool is shut down after the line is printed, outside the timing.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable

from _workloads import identity  # the user's own module: imported before the clock starts

Timing = tuple[float, float, Callable[[], object]]  # import_s, first_s, cleanup


def forkjoin_map(workers: int) -> Timing:
    start = time.perf_counter()
    import forkjoin as fj

    imported = time.perf_counter()
    result = fj.map(identity, [1], workers=workers)
    first = time.perf_counter()
    assert result == [1], result
    return imported - start, first - start, lambda: None  # forkjoin stops its pool at exit


def forkjoin_submit(workers: int) -> Timing:
    start = time.perf_counter()
    import forkjoin as fj

    imported = time.perf_counter()
    pool = fj.Pool(workers)
    result = pool.submit(identity, 1).result()
    first = time.perf_counter()
    assert result == 1, result
    return imported - start, first - start, pool.shutdown


def _mp_pool(workers: int, method: str | None) -> Timing:
    start = time.perf_counter()
    import multiprocessing

    imported = time.perf_counter()
    context = multiprocessing.get_context(method)
    pool = context.Pool(workers)
    result = pool.map(identity, [1])
    first = time.perf_counter()
    assert result == [1], result

    def cleanup() -> None:
        pool.terminate()
        pool.join()

    return imported - start, first - start, cleanup


def mp_default(workers: int) -> Timing:
    return _mp_pool(workers, None)


def mp_spawn(workers: int) -> Timing:
    return _mp_pool(workers, "spawn")


def process_pool_executor(workers: int) -> Timing:
    start = time.perf_counter()
    from concurrent.futures import ProcessPoolExecutor

    imported = time.perf_counter()
    executor = ProcessPoolExecutor(workers)
    result = list(executor.map(identity, [1]))
    first = time.perf_counter()
    assert result == [1], result
    return imported - start, first - start, executor.shutdown


def joblib_loky(workers: int) -> Timing:
    start = time.perf_counter()
    from joblib import Parallel, delayed

    imported = time.perf_counter()
    result = Parallel(n_jobs=workers)(delayed(identity)(x) for x in [1])
    first = time.perf_counter()
    assert result == [1], result
    return imported - start, first - start, lambda: None  # loky stops its workers at exit


CONTENDERS: dict[str, Callable[[int], Timing]] = {
    "forkjoin_map": forkjoin_map,
    "forkjoin_submit": forkjoin_submit,
    "mp_default": mp_default,
    "mp_spawn": mp_spawn,
    "process_pool_executor": process_pool_executor,
    "joblib_loky": joblib_loky,
}


def main() -> None:
    name = sys.argv[1]
    workers = int(sys.argv[2]) if len(sys.argv) > 2 else 2
    import_s, first_s, cleanup = CONTENDERS[name](workers)
    print("RESULT " + json.dumps({"import_s": import_s, "first_s": first_s}), flush=True)
    cleanup()


if __name__ == "__main__":  # spawned workers re-import this module as __mp_main__
    main()
