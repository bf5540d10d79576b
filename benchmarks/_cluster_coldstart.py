"""One engine cold start in a fresh interpreter: ``python _cluster_coldstart.py CONTENDER [N]``.

Prints ``RESULT {"import_s": ..., "first_s": ...}``: seconds from just before the import of
forkjoin (or of the engine) to the end of that import, and to the first result of a one-item
call, so the engine's start-up (Ray's servers, a Dask LocalCluster) and one round trip are
included. The engine is stopped after the line is printed, outside the timing.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable

from _workloads import identity  # the user's own module: imported before the clock starts

Timing = tuple[float, float, Callable[[], object]]  # import_s, first_s, cleanup


def forkjoin_map(backend: str, workers: int) -> Timing:
    start = time.perf_counter()
    import forkjoin as fj

    imported = time.perf_counter()
    result = fj.map(identity, [1], backend=backend, workers=workers)
    first = time.perf_counter()
    assert result == [1], result
    from forkjoin.engine.api import shared_pools

    return imported - start, first - start, shared_pools.shutdown


def ray_native(workers: int) -> Timing:
    start = time.perf_counter()
    import ray

    imported = time.perf_counter()
    ray.init(
        address="local",  # a new instance, as forkjoin's local start makes
        num_cpus=workers,
        include_dashboard=False,
        logging_level=logging.WARNING,
    )
    result = ray.get(ray.remote(identity).remote(1))
    first = time.perf_counter()
    assert result == 1, result
    return imported - start, first - start, ray.shutdown


def dask_native(workers: int) -> Timing:
    start = time.perf_counter()
    import distributed

    imported = time.perf_counter()
    cluster = distributed.LocalCluster(
        n_workers=workers,
        threads_per_worker=1,
        host="127.0.0.1",
        dashboard_address=None,
        silence_logs=logging.ERROR,
    )
    client = distributed.Client(cluster)
    result = client.submit(identity, 1).result()
    first = time.perf_counter()
    assert result == 1, result

    def cleanup() -> None:
        client.close()
        cluster.close()

    return imported - start, first - start, cleanup


CONTENDERS: dict[str, Callable[[int], Timing]] = {
    "ray_forkjoin": lambda workers: forkjoin_map("ray", workers),
    "ray_native": ray_native,
    "dask_forkjoin": lambda workers: forkjoin_map("dask", workers),
    "dask_native": dask_native,
}


def main() -> None:
    name = sys.argv[1]
    workers = int(sys.argv[2]) if len(sys.argv) > 2 else 2
    import_s, first_s, cleanup = CONTENDERS[name](workers)
    print("RESULT " + json.dumps({"import_s": import_s, "first_s": first_s}), flush=True)
    cleanup()


if __name__ == "__main__":  # Dask's spawned workers re-import this module as __mp_main__
    main()
