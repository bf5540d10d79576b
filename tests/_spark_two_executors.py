"""Run by test_spark_backend.py in its own interpreter (one SparkContext per process): a Spark
with two executors (``local-cluster[2,1,1024]``: a master and two workers inside the driver's
JVM, each executor its own JVM, all on 127.0.0.1) loses one executor - its JVM and its Python
workers, as when a node dies - in the middle of a map. Prints one JSON line."""

from __future__ import annotations

import json
import os
import sys
import threading
import time

import psutil

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _cluster_tasks  # noqa: E402

import forkjoin as fj  # noqa: E402

SETTINGS = {
    "spark.driver.bindAddress": "127.0.0.1",
    "spark.driver.host": "127.0.0.1",
    "spark.ui.enabled": "false",
    "spark.ui.showConsoleProgress": "false",
    "spark.driver.memory": "512m",
    "spark.executor.memory": "512m",
    "spark.log.level": "ERROR",
}


def slow_node_of(item: int) -> tuple[int, str, int]:
    return _cluster_tasks.node_of(item, 0.1)


def executors() -> list[psutil.Process]:
    found = []
    for child in psutil.Process().children(recursive=True):
        try:
            if "CoarseGrainedExecutorBackend" in " ".join(child.cmdline()):
                found.append(child)
        except psutil.Error:
            pass
    return found


def kill_tree(process: psutil.Process) -> None:
    for proc in [process, *process.children(recursive=True)]:
        try:
            proc.kill()
        except psutil.Error:
            pass


def main() -> None:
    out: dict = {}
    with fj.Pool(
        backend="spark", address="local-cluster[2,1,1024]", cluster_options=SETTINGS, retries=3
    ) as pool:
        out["workers"] = pool.workers
        first = pool.map_list(slow_node_of, range(16), chunksize=1)
        out["first_nodes"] = sorted({node for _, node, _ in first})
        victim = executors()[0]
        out["victim"] = f"executor-{victim.pid}"
        started = time.monotonic()
        killer = threading.Timer(1.0, kill_tree, (victim,))
        killer.start()
        second = pool.map_list(slow_node_of, range(60), chunksize=1)
        out["map_seconds"] = time.monotonic() - started
        killer.join()
        out["second_items"] = [item for item, _, _ in second]
        out["second_nodes_after"] = sorted({node for _, node, _ in second[-10:]})
        out["crashes"] = pool.stats().worker_crashes
        out["processes"] = [p.pid for p in psutil.Process().children(recursive=True)]
    print(json.dumps(out))


if __name__ == "__main__":
    main()
