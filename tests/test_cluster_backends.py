"""Ray, Dask and Spark backends on real engines: what the contract suite cannot show.

The contract suite (test_contract.py, test_executor.py) runs every engine behaviour on Ray and
Dask through the session's local clusters (conftest.py). Here: worker deaths, timeouts, resources,
fj.shared through the engine's object store, loopback-only local starts, TLS, and two-node
clusters started as separate processes on 127.0.0.1, joined by address, losing a node mid-map.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import _cluster_tasks
import numpy as np
import psutil
import pytest
from helpers import pid_gone, wait_until

import forkjoin as fj
from forkjoin.errors import ResourceError, TaskTimeoutError, WorkerCrashedError

pytestmark = pytest.mark.timeout(180)

TESTS = Path(__file__).resolve().parent


@pytest.fixture(params=["ray", "dask", "spark"])
def engine(request: pytest.FixtureRequest) -> str:
    request.getfixturevalue(f"{request.param}_cluster")
    return request.param


# -- faults ----------------------------------------------------------------------------------------


def test_worker_killed_mid_task_is_retried_and_results_kept(engine, tmp_path):
    items = [(i, str(tmp_path)) for i in range(20)]
    with fj.Pool(2, engine, retries=2) as pool:
        out = pool.map_list(_cluster_tasks.kill_worker_once, items, chunksize=1)
        stats = pool.stats()
    assert out == [i * i for i in range(20)]
    killed = sorted(p.name for p in tmp_path.iterdir())
    assert killed == [f"killed-{i}" for i in (0, 10, 15, 5)] or len(killed) == 4
    assert stats.tasks_retried >= 4 and stats.worker_crashes >= 4


def test_a_task_that_kills_every_worker_is_reported_not_retried_for_ever(engine):
    start = time.monotonic()
    with pytest.raises(WorkerCrashedError) as caught:
        fj.map(_cluster_tasks.kill_worker_always, [7], backend=engine, workers=2, retries=1)
    error = caught.value
    assert error.index == 0 and error.attempts == 2
    assert "died while running" in str(error)
    assert time.monotonic() - start < 60
    # the engine is still usable afterwards
    assert fj.map(abs, [-1, -2], backend=engine, workers=2) == [1, 2]


def test_ray_interrupts_a_task_at_its_timeout(ray_cluster):
    start = time.monotonic()
    with pytest.raises(TaskTimeoutError, match="timeout of 1 s"):
        fj.map(time.sleep, [30], backend="ray", workers=2, timeout=1)
    assert time.monotonic() - start < 10


def test_spark_interrupts_a_task_at_its_timeout(spark_cluster):
    start = time.monotonic()
    with pytest.raises(TaskTimeoutError, match="timeout of 1 s"):
        fj.map(time.sleep, [30], backend="spark", workers=2, timeout=1)
    assert time.monotonic() - start < 10
    assert fj.map(abs, [-1, -2], backend="spark", workers=2) == [1, 2]  # still usable


def test_dask_refuses_a_timeout_it_cannot_enforce(dask_cluster):
    with pytest.raises(ValueError, match="timeout= needs a backend"):
        fj.map(abs, [1], backend="dask", workers=2, timeout=1)


# -- resources -------------------------------------------------------------------------------------


def test_resources_are_the_clusters(engine):
    assert fj.map(abs, [-3], backend=engine, workers=2, resources={"cpu": 1}) == [3]
    with pytest.raises(ResourceError, match="gpu|GPU"):
        fj.map(abs, [-3], backend=engine, workers=2, resources={"gpu": 1})


def test_pool_without_workers_takes_the_clusters_size(engine):
    with fj.Pool(backend=engine) as pool:
        assert pool.workers == 2  # the session's local clusters have 2 CPUs


def test_initializer_runs_once_per_worker_process(engine):
    with fj.Pool(2, engine, initializer=_cluster_tasks.mark_initialized) as pool:
        out = pool.map_list(_cluster_tasks.worker_context_state, range(6), chunksize=1)
    assert out == [(engine, 1)] * 6


# -- data: fj.shared through the engine's object store ---------------------------------------------


def test_shared_objects_go_to_the_object_store_once(engine):
    array = np.arange(2_000_000, dtype=np.float64)  # 16 MB
    handle = fj.shared(array)
    with fj.Pool(2, engine) as pool:
        backend = pool._backend
        sums = pool.map_list(_cluster_tasks.shared_sum, [handle] * 8, chunksize=1)
        assert list(backend._shared) == [handle.shared_id]  # put once for all 8 tasks
        from forkjoin.core.task import CallKind, FunctionRef, Task

        task = Task(FunctionRef(_cluster_tasks.shared_sum), CallKind.MAP, [handle], 0)
        payload, ids, _ = backend._encode_items(task)
        assert ids == [handle.shared_id] and len(payload) < 1000  # a reference, not 16 MB
    assert sums == [float(array.sum())] * 8


# -- where it runs ---------------------------------------------------------------------------------


def _listening_addresses(pids: list[int]) -> set[str]:
    found = set()
    for pid in pids:
        try:
            for conn in psutil.Process(pid).net_connections(kind="inet"):
                if conn.status == psutil.CONN_LISTEN:
                    found.add(conn.laddr.ip)
        except psutil.Error:
            pass
    return found


def test_local_start_listens_on_loopback_only(engine):
    pool = {"ray": "ray_cluster", "dask": "dask_cluster", "spark": "spark_cluster"}[engine]
    pids = [os.getpid(), *engine_pool(pool).worker_pids()]
    addresses = _listening_addresses(pids)
    assert addresses, "the engine should be listening somewhere"
    assert addresses <= {"127.0.0.1", "::ffff:127.0.0.1", "::1"}, addresses


_pools: dict[str, fj.Pool] = {}


def engine_pool(name: str) -> fj.Pool:
    from helpers import LONG_LIVED

    wanted = name.split("_")[0]
    return next(p for p in LONG_LIVED if p.backend_name == wanted)


def test_an_engine_forkjoin_started_stops_with_its_last_pool():
    code = """
import json, time, forkjoin as fj
out = {}
for name in ("dask", "ray"):
    first = fj.Pool(2, name)
    second = fj.Pool(2, name)
    pids = first.worker_pids()
    first.shutdown()
    out[name + "_after_first"] = first.worker_pids() == [] or second.map_list(abs, [-1]) == [1]
    second.shutdown()
    out[name] = pids
print(json.dumps(out))
"""
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=150
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    for name in ("dask", "ray"):
        assert out[name], f"{name}: forkjoin's local start should have started processes"
        assert out[name + "_after_first"], f"{name} stopped while a pool still used it"
        assert wait_until(lambda n=name: all(pid_gone(p) for p in out[n]), 15), (
            f"{name} processes outlived the last pool"
        )


def test_joining_a_missing_cluster_fails_fast():
    port = _free_port()
    start = time.monotonic()
    with pytest.raises(OSError):
        fj.map(
            abs, [1], backend="dask", address=f"tcp://127.0.0.1:{port}",
            cluster_options={"timeout": 3},
        )  # fmt: skip
    assert time.monotonic() - start < 30


def test_address_needs_a_cluster_backend():
    with pytest.raises(ValueError, match="backend='ray' or backend='dask'"):
        fj.map(abs, [1], backend="process", address="tcp://127.0.0.1:8786")


def test_dask_tls_security_is_passed_through(dask_cluster):
    from distributed import Client, LocalCluster
    from distributed.security import Security

    security = Security.temporary()
    with LocalCluster(
        n_workers=1, processes=False, protocol="tls", host="127.0.0.1", security=security,
        dashboard_address=None,
    ) as cluster:  # fmt: skip
        address = cluster.scheduler_address
        assert address.startswith("tls://127.0.0.1")
        out = fj.map(
            abs, [-1, -2], backend="dask", address=address, cluster_options={"security": security}
        )
        assert out == [1, 2]
        with pytest.raises(Exception):  # noqa: B017 - no credentials: refused, whatever the type
            Client(address, timeout=3).close()


# -- two nodes on loopback, one lost mid-map -------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def slow_node_of(item: int) -> tuple[int, str, int]:
    return _cluster_tasks.node_of(item, 0.1)


def test_dask_two_worker_nodes_by_address_survive_losing_one(dask_cluster):
    from distributed import Client

    port = _free_port()
    address = f"tcp://127.0.0.1:{port}"
    path = os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])
    env = dict(os.environ, PYTHONPATH=path)
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL, "env": env}
    cli = [sys.executable, "-m"]
    processes = [
        subprocess.Popen(
            [*cli, "distributed.cli.dask_scheduler", "--host", "127.0.0.1", "--port", str(port),
             "--no-dashboard"], **quiet,
        )
    ]  # fmt: skip
    try:
        for name in ("node-a", "node-b"):
            processes.append(
                subprocess.Popen(
                    [*cli, "distributed.cli.dask_worker", address, "--name", name,
                     "--nthreads", "1", "--no-nanny", "--host", "127.0.0.1", "--no-dashboard"],
                    **quiet,
                )
            )  # fmt: skip
        with Client(address, timeout=30) as client:
            client.wait_for_workers(2, timeout=60)
        with fj.Pool(backend="dask", address=address, retries=3) as pool:
            assert pool.workers == 2
            first = pool.map_list(_cluster_tasks.node_of, range(16), chunksize=1)
            killer = threading.Timer(1.0, processes[2].kill)  # node-b, mid-map
            killer.start()
            second = pool.map_list(slow_node_of, range(60), chunksize=1)
            killer.join()
        assert {node for _, node, _ in first} == {"node-a", "node-b"}
        assert [item for item, _, _ in second] == list(range(60))  # none lost, none twice
        assert processes[2].wait(timeout=10) is not None
        tail = [node for _, node, _ in second[-10:]]
        assert set(tail) == {"node-a"}, "after node-b died, node-a did the rest"
    finally:
        for process in processes:
            process.kill()
            process.wait(timeout=30)


def test_ray_two_nodes_by_address_survive_losing_one():
    result = subprocess.run(
        [sys.executable, str(TESTS / "_ray_two_nodes.py")],
        capture_output=True,
        text=True,
        timeout=170,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["address"].startswith("127.0.0.1:")
    assert len(out["first_nodes"]) == 2, "both nodes should have run tasks"
    assert out["killed_after"] < out["map_seconds"], "the node should die mid-map"
    assert out["second_items"] == list(range(60)), "none lost, none twice"
    assert len(out["last_nodes"]) == 1, "after one node died, the other did the rest"
    assert wait_until(lambda: all(pid_gone(p) for p in out["processes"]), 15)
