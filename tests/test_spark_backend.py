"""backend="spark" beyond the contract suites (which run on the session's local Spark): an
executor lost mid-map, the user's own SparkSession, the host socket's authentication, and the
errors that say what to install when pyspark or Java is missing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from multiprocessing.connection import AuthenticationError, Client
from pathlib import Path

import pytest
from helpers import LONG_LIVED, pid_gone, wait_until

import forkjoin as fj

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(300)]

TESTS = Path(__file__).resolve().parent


def _run(code: str, env: dict[str, str] | None = None, timeout: float = 120):
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=dict(os.environ, **(env or {})),
    )


def test_import_forkjoin_does_not_import_pyspark():
    done = _run("import sys, forkjoin; print('pyspark' in sys.modules, 'py4j' in sys.modules)")
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", "False"]


def test_missing_pyspark_names_the_extra():
    code = (
        "import sys; sys.modules['pyspark'] = None\n"
        "import forkjoin as fj\n"
        "from forkjoin.errors import BackendUnavailableError\n"
        "try:\n    fj.map(abs, [1], backend='spark')\n"
        "except BackendUnavailableError as e:\n    print('ERROR', e)\n"
    )
    done = _run(code)
    assert "ERROR" in done.stdout, done.stderr[-2000:]
    assert 'pip install "forkjoin[spark]"' in done.stdout


def test_missing_java_is_a_clear_error_at_once():
    import pyspark  # noqa: F401
    code = (
        "import forkjoin as fj\n"
        "from forkjoin.errors import BackendUnavailableError\n"
        "try:\n    fj.map(abs, [1], backend='spark')\n"
        "except BackendUnavailableError as e:\n    print('ERROR', e)\n"
    )
    start = time.monotonic()
    done = _run(code, env={"JAVA_HOME": "/nonexistent-jdk"})
    assert "ERROR" in done.stdout, done.stderr[-2000:]
    assert "needs Java 17 or 21" in done.stdout and "JAVA_HOME" in done.stdout
    assert time.monotonic() - start < 60  # no JVM start attempted, no wait


def test_info_names_java():
    from forkjoin.sysinfo import backends, collect_info, format_info

    entry = backends()["spark"]
    assert entry["java"] and "version" in (entry["java_version"] or "")
    assert "java:" in format_info(collect_info())


def test_the_users_own_session_is_joined_not_stopped(spark_cluster):
    session = spark_cluster._backend._connection.session
    assert fj.map(abs, [-1, -2, -3], backend="spark", address=session) == [1, 2, 3]
    with fj.Pool(backend="spark", address=session.sparkContext) as pool:
        assert pool.workers == session.sparkContext.defaultParallelism
        assert pool.map_list(abs, [-4]) == [4]
    # still running for everyone else
    assert session.sparkContext.parallelize([1, 2], 2).sum() == 3


def test_the_host_socket_refuses_a_peer_without_the_key(spark_cluster):
    backend = spark_cluster._backend
    assert spark_cluster.map_list(abs, [-1]) == [1]  # hosts are serving
    address = backend._listener.address
    assert address[0] == "127.0.0.1"
    with pytest.raises((AuthenticationError, EOFError, ConnectionError)):
        Client(address, authkey=b"not the key").send(("hello", 0, 0))
    assert spark_cluster.map_list(abs, [-2, -3]) == [2, 3]


def test_pools_share_hosts_and_keep_their_initializers_apart(spark_cluster):
    import _cluster_tasks

    with fj.Pool(2, "spark", initializer=_cluster_tasks.mark_initialized) as marked:
        with fj.Pool(2, "spark") as plain:
            a = marked.map_list(_cluster_tasks.worker_context_state, range(4), chunksize=1)
            b = plain.map_list(_cluster_tasks.worker_context_state, range(4), chunksize=1)
    assert a == [("spark", 1)] * 4 and b == [("spark", 0)] * 4


@pytest.mark.slow
def test_an_executor_lost_mid_map_still_gives_every_result_exactly_once():
    """local-cluster[2,1,1024]: two executor JVMs on 127.0.0.1; one is killed (with its Python
    workers) 1 s into a 6 s map; forkjoin retries what it was running on the other."""
    import pyspark  # noqa: F401
    env = dict(os.environ, SPARK_LOCAL_IP="127.0.0.1")
    done = subprocess.run(
        [sys.executable, str(TESTS / "_spark_two_executors.py")],
        capture_output=True,
        text=True,
        timeout=280,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["workers"] == 2
    assert len(out["first_nodes"]) == 2, "both executors should have run tasks"
    assert out["second_items"] == list(range(60)), "none lost, none twice"
    assert out["crashes"] >= 1 and out["map_seconds"] > 1.0
    assert out["victim"] not in out["second_nodes_after"], "the lost executor ran no more"
    assert wait_until(lambda: all(pid_gone(p) for p in out["processes"]), 20), (
        "Spark's processes outlived the last pool"
    )


def test_session_pool_is_long_lived(spark_cluster):
    assert spark_cluster in LONG_LIVED and spark_cluster.worker_pids()
