"""Fixtures: the backend list of the contract suite, and a leak check after every test.

The leak check (loky's ``_executor_mixin.py`` does the same) runs after each test: it stops the
shared pools that ``forkjoin.map`` keeps warm between calls, then waits a few seconds for every
child process of this interpreter to be gone, for no forkjoin thread to be left running, and for
no new ``/dev/shm`` segment or forkjoin temporary file to remain. Pools that a test module keeps
for all its tests (``helpers.long_lived_pool``) are exempt until the module ends, when their own
teardown checks that their workers are gone.
"""

from __future__ import annotations

import os
import resource
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

# pytest puts this folder on sys.path (rootdir-relative "prepend" imports: tests/ is not a
# package), and workers receive the caller's sys.path: so they import _tasks by name too.
from helpers import (
    BACKENDS,
    CLUSTER_BACKENDS,
    LEAK_GRACE_SECONDS,
    LONG_LIVED,
    long_lived_pool,
    pool_pids,
    running_long_lived,
    wait_until,
)

import forkjoin as fj
from forkjoin.engine.api import shared_pools

# A crash test that segfaults must not leave core files behind (workers inherit this limit).
resource.setrlimit(resource.RLIMIT_CORE, (0, resource.getrlimit(resource.RLIMIT_CORE)[1]))


# /dev/shm is shared with every other process on the machine (other test runs, joblib...): only
# names forkjoin or Python's multiprocessing.shared_memory would create count as ours.
_OUR_SHM_PREFIXES = ("forkjoin", "fj", "psm_", "wnsm_")


def _shm_entries() -> set[str]:
    try:
        names = os.listdir("/dev/shm")
    except FileNotFoundError:
        return set()
    return {name for name in names if name.lower().startswith(_OUR_SHM_PREFIXES)}


def _forkjoin_temp_files() -> set[str]:
    tmp = tempfile.gettempdir()
    try:
        return {name for name in os.listdir(tmp) if "forkjoin" in name.lower()}
    except FileNotFoundError:
        return set()


def _threads_named(prefix: str) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith(prefix) and t.is_alive()]


def _threads_ok() -> bool:
    managers = _threads_named("forkjoin-process-manager")
    if len(managers) > len(running_long_lived("process")):
        return False
    return not (_threads_named("forkjoin-thread") and not running_long_lived("threads"))


def _stop_forgotten_backends() -> list[str]:
    """Process backends still running that no long-lived pool owns: a test forgot shutdown().
    Stopped here, or their manager would keep replacing the workers the check kills."""
    from forkjoin.backends import process

    owned = {id(pool._backend) for pool in LONG_LIVED}
    forgotten = [b for b in list(process._live_backends) if id(b) not in owned and b.alive]
    for backend in forgotten:
        backend.shutdown(wait=True, cancel_pending=True)
    return [f"process backend with workers {b.worker_pids()}" for b in forgotten]


def _is_fork_of_this(child: psutil.Process) -> bool:
    """A fork of the test process itself (a ``multiprocessing.Manager`` server an upstream test
    left to the garbage collector): never forkjoin's, whose workers are fresh interpreters or
    forks of its zygote, each with a command line of its own."""
    try:
        return child.ppid() == os.getpid() and child.cmdline() == psutil.Process().cmdline()
    except psutil.Error:
        return False


def _live_children() -> list[psutil.Process]:
    """Children of this process that are running, other than long-lived pools' workers (read
    afresh each time: such a pool may be replacing a worker right now)."""
    exempt = {pid for pool in LONG_LIVED for pid in pool_pids(pool)}
    alive = []
    for child in psutil.Process().children(recursive=True):
        if child.pid in exempt or _is_resource_tracker(child) or _is_fork_of_this(child):
            continue
        try:
            if child.status() != psutil.STATUS_ZOMBIE:
                alive.append(child)
        except psutil.NoSuchProcess:
            pass
    return alive


def _is_resource_tracker(proc: psutil.Process) -> bool:
    """multiprocessing's resource tracker (Dask's LocalCluster starts one), or loky's (joblib's
    own backend, which tests/compat runs): one per interpreter, lives until the interpreter
    exits, holds nothing of ours."""
    return ".resource_tracker import main" in _cmdline(proc)


def _cmdline(proc: psutil.Process) -> str:
    try:
        return " ".join(proc.cmdline())[:120]
    except psutil.Error:
        return "?"


@pytest.fixture(autouse=True)
def no_leaks(request: pytest.FixtureRequest) -> Iterator[None]:
    shm_before = _shm_entries()
    tmp_before = _forkjoin_temp_files()
    yield
    shared_pools.shutdown()
    joblib_bridge = sys.modules.get("forkjoin.integrations.joblib")
    if joblib_bridge is not None:  # its pool stays warm between Parallel calls, as loky's does
        joblib_bridge.shutdown_warm_pool()
    forgotten = _stop_forgotten_backends()
    leaked: list[psutil.Process] = []
    if not wait_until(lambda: not _live_children(), LEAK_GRACE_SECONDS, 0.05):
        leaked = _live_children()
    threads_ok = wait_until(_threads_ok, LEAK_GRACE_SECONDS)
    new_shm: set[str] = set()
    if not wait_until(lambda: not (_shm_entries() - shm_before), LEAK_GRACE_SECONDS):
        new_shm = _shm_entries() - shm_before
    new_tmp = _forkjoin_temp_files() - tmp_before
    problems = [f"pool never shut down: {name}" for name in forgotten]
    if leaked:
        problems.append(
            "child processes left running: " + ", ".join(f"{p.pid} ({_cmdline(p)})" for p in leaked)
        )
    for proc in leaked:  # one test's leak must not fail every test after it
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    if not threads_ok:
        problems.append(f"forkjoin threads left running: {threading.enumerate()}")
    if new_shm:
        problems.append(f"/dev/shm entries left behind: {sorted(new_shm)}")
    if new_tmp:
        problems.append(f"temporary files left behind: {sorted(new_tmp)}")
    if problems:
        pytest.fail(f"{request.node.nodeid} leaked: " + "; ".join(problems), pytrace=False)


@pytest.fixture(params=BACKENDS + CLUSTER_BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """Each backend in turn: the contract suite runs every test on all of them. A cluster
    engine is started once per session, on first use, and every pool joins it."""
    if request.param in CLUSTER_BACKENDS:
        request.getfixturevalue(f"{request.param}_cluster")
    return request.param


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[fj.Pool]:
    """A local Ray (127.0.0.1, 2 CPUs) that forkjoin starts; the last pool stops it."""
    yield from long_lived_pool(2, "ray")


@pytest.fixture(scope="session")
def dask_cluster() -> Iterator[fj.Pool]:
    """A local Dask cluster (127.0.0.1, 2 single-threaded worker processes)."""
    yield from long_lived_pool(2, "dask")


@pytest.fixture(scope="session")
def spark_cluster() -> Iterator[fj.Pool]:
    """A local Spark (local[2], driver on 127.0.0.1, UI off) that forkjoin starts; the last
    pool stops it and its JVM."""
    from forkjoin.backends.spark_session import java_executable

    if java_executable() is None:  # a system package: .ci/run installs it
        pytest.fail("the Spark tests need Java (apt-get install openjdk-17-jre-headless)")
    yield from long_lived_pool(2, "spark")


# -- markers ---------------------------------------------------------------------------------------

_CLUSTER_FIXTURES = {"ray_cluster", "dask_cluster", "spark_cluster"}
# The fast core is the engine, the backends and the data plane. Slow: whole suites that run the
# layers above them end to end (data pipelines on worker pools, the CLI in subprocesses, reports
# in Chromium, docs and wheel builds), and the engine tests that take seconds each (measured with
# --durations on a 2-core machine: crash storms, multi-MB payloads, millions of items).
_SLOW_FILES = {
    "test_examples.py", "test_stress.py", "test_cli.py", "test_dashboard.py", "test_docs.py",
    "test_packaging.py", "test_analysis_scaling.py", "test_joblib_integration.py",
    "test_profiler.py", "test_run_report_option.py", "test_preload.py", "test_distribution.py",
    "test_sklearn_bench.py", "test_gpu_check.py", "test_fault_cost.py",
}  # fmt: skip
_SLOW_FILE_PREFIXES = ("test_data_",)  # forkjoin.data: pyarrow pipelines on worker pools
_SLOW_TESTS = {
    "test_workers_sigkill_each_other", "test_crash_while_a_large_result_is_in_flight",
    "test_crash_while_a_large_argument_is_in_flight", "test_large_payloads_both_ways_in_parallel",
    "test_a_chunk_over_its_timeout_blames_only_the_slow_item",
    "test_a_finished_result_is_delivered_while_its_worker_runs_a_slow_task",
    "test_no_file_descriptor_leak_in_the_caller",
    "test_two_million_items_stream_with_bounded_read_ahead",
    "test_memory_stays_flat", "test_releasing_results_while_submitting_never_loses_a_wake_up",
    "test_normal_exit_moves_data_through_segments_and_leaves_nothing",
    "test_run_on_devices_cpu_inference_matches_a_plain_loop",
    # measured at 0.45 s or more on a quiet 2-core machine (--durations), so the fast core
    # stays under a minute: timeouts, sleeps and worker starts they wait for by design
    "test_a_call_on_a_backend_that_dies_under_it_raises_promptly",
    "test_a_graceful_shutdown_under_a_call_still_delivers_its_accepted_tasks",
    "test_a_slow_first_item_does_not_let_ordered_results_pile_up",
    "test_a_worker_that_keeps_memory_between_tasks_is_replaced",
    "test_argument_segments_are_reused",
    "test_as_completed_yields_in_completion_order",
    "test_caller_raising_mid_map_in_a_pool_block_leaves_nothing",
    "test_cancel_a_pending_future",
    "test_done_callback_raising_base_exception_leaves_the_pool_usable",
    "test_every_capability_flag_is_read",
    "test_executor_map_raises_at_the_failing_position",
    "test_executor_map_timeout_is_per_task",
    "test_half_a_gpu_per_worker_puts_two_workers_on_each_gpu",
    "test_hang_that_ignores_sigterm_is_killed",
    "test_initializer_array_reaches_a_replacement_worker",
    "test_input_iterator_raising_surfaces_in_map",
    "test_map_returns_results_in_input_order",
    "test_memory_limit_does_not_count_shared_segments",
    "test_open_fds_return_to_their_starting_count",
    "test_payload_round_trips_through_a_worker",
    "test_replacement_worker_keeps_the_dead_workers_gpu",
    "test_results_streamed_before_a_crash_are_kept",
    "test_run_on_devices_batches_a_generator",
    "test_run_on_devices_on_chosen_gpus_or_cpu",
    "test_segments_are_unmapped_once_results_are_dropped_and_the_pool_shuts_down",
    "test_shutdown_wait_finishes_running_and_queued_tasks",
    "test_shutdown_without_wait_returns_at_once_and_workers_still_exit",
    "test_task_exception_with_big_argument_leaves_nothing",
    "test_task_over_the_limit_is_stopped_with_a_clear_error",
    "test_tasks_on_one_gpu_never_exceed_it",
    "test_tasks_submitted_together_run_on_different_workers",
    "test_thread_caps_follow_the_cpus_per_worker",
    "test_timeout_is_not_hit_by_queued_time",
    "test_timeout_raises_within_grace_and_replaces_the_worker",
    "test_unordered_does_not_wait_for_a_slow_first_item",
    "test_wait_first_and_all_completed",
    "test_wall_time_shows_parallelism",
    "test_worker_sigkilled_holding_big_data_leaves_nothing",
    "test_workers_ignore_sigint_and_live_in_their_own_session",
}  # fmt: skip


FAST_CORE = "not slow and not cluster and not train and not compat"


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    """Under exactly the fast-core expression, do not even import the suites it leaves out
    whole (their imports of torch, pyarrow, scikit-learn, Ray cost more than the core's tests)."""
    if " ".join((config.getoption("markexpr") or "").split()) != FAST_CORE:
        return None
    name = collection_path.name
    whole = (
        name in _SLOW_FILES
        or name.startswith(_SLOW_FILE_PREFIXES)
        or name.startswith("test_train")
        or "_cluster" in name
        or "on_clusters" in name
        or name == "compat"
    )
    return True if whole else None


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark what the fast core leaves out, from what a test uses, so no test has to remember:
    ``cluster`` (a Ray, Dask or Spark instance), ``train`` (torch.distributed ranks), ``slow``.
    ``python -m pytest -m "not slow and not cluster and not train and not compat"`` is the
    core a developer runs while working; the README's command runs everything."""
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        fixtures = set(getattr(item, "fixturenames", ()))
        engines = {params.get("backend"), params.get("engine")}
        if fixtures & _CLUSTER_FIXTURES or engines & set(CLUSTER_BACKENDS):
            item.add_marker(pytest.mark.cluster)
        name = item.path.name
        if name.startswith("test_train") or "_cluster" in name or "on_clusters" in name:
            item.add_marker("train" if name.startswith("test_train") else "cluster")
        slow_test = getattr(item, "originalname", item.name) in _SLOW_TESTS
        if name in _SLOW_FILES or name.startswith(_SLOW_FILE_PREFIXES) or slow_test:
            item.add_marker(pytest.mark.slow)


@pytest.fixture
def spill_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """forkjoin.data's spill files go here (FORKJOIN_SPILL_DIR); the test fails if any is left."""
    from forkjoin.data import spill

    root = tmp_path / "spill"
    root.mkdir()
    monkeypatch.setenv(spill.SPILL_DIR_ENV, str(root))
    yield root
    assert os.listdir(root) == [], "spill files left behind"
