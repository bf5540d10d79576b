"""Two Ray nodes on 127.0.0.1, a forkjoin map over them by address, one node killed mid-map.

Run by test_cluster_backends.py in a subprocess (the test process already has a Ray of its own).
Each node is a separate raylet with its own workers, started with Ray's own multi-node harness
(``ray.cluster_utils.Cluster``, what Ray's test suite uses); Ray's single-node switch keeps the
nodes on the loopback address. Prints one JSON line.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time

os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # nodes keep 127.0.0.1 as their IP

import psutil  # noqa: E402
from ray.cluster_utils import Cluster  # noqa: E402

import forkjoin as fj  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from _cluster_tasks import node_of  # noqa: E402


def slow_node_of(item: int) -> tuple[int, str, int]:
    return node_of(item, 0.1)


def main() -> None:
    cluster = Cluster(
        initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False}
    )
    processes: list[int] = []
    try:
        address = cluster.address
        worker_node = cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        runtime_env = {"env_vars": {"PYTHONPATH": HERE}}  # where workers find _cluster_tasks
        with fj.Pool(
            backend="ray",
            address=cluster.address,
            cluster_options={"runtime_env": runtime_env},
            retries=3,
        ) as pool:
            first = pool.map_list(node_of, range(16), chunksize=1)
            killed_at: list[float] = []

            def kill_worker_node() -> None:
                cluster.remove_node(worker_node, allow_graceful=False)
                killed_at.append(time.monotonic())

            killer = threading.Timer(1.0, kill_worker_node)
            started = time.monotonic()
            killer.start()
            second = pool.map_list(slow_node_of, range(60), chunksize=1)
            finished = time.monotonic()
            killer.join()
            stats = pool.stats()
        processes = [p.pid for p in psutil.Process().children(recursive=True)]
    finally:
        cluster.shutdown()
    print(
        json.dumps(
            {
                "address": address,
                "killed_after": killed_at[0] - started,
                "map_seconds": finished - started,
                "last_nodes": sorted({node for _, node, _ in second[-10:]}),
                "first_nodes": sorted({node for _, node, _ in first}),
                "second_items": [item for item, _, _ in second],
                "second_nodes": sorted({node for _, node, _ in second}),
                "retried": stats.tasks_retried,
                "crashes": stats.worker_crashes,
                "processes": processes,
            }
        )
    )


if __name__ == "__main__":
    main()
