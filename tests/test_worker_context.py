"""fj.worker_context(): per-worker identity and state that outlives a task (load once, reuse)."""

from __future__ import annotations

import os

import _tasks
import pytest
from helpers import CLUSTER_BACKENDS

import forkjoin as fj


def test_initializer_loads_state_once_per_worker_and_tasks_reuse_it(backend: str) -> None:
    with fj.Pool(
        2, backend, initializer=_tasks.load_model_into_worker_state, initargs=("tiny-bert",)
    ) as pool:
        results = pool.map_list(_tasks.use_worker_state, range(40), chunksize=1)
    assert [x for *_, x in results] == list(range(40))
    assert {model for _, _, model, _, _ in results} == {"tiny-bert"}
    assert {loads for _, _, _, loads, _ in results} == {1}, "the initializer ran once per worker"
    worker_ids = {worker for worker, *_ in results}
    if backend in CLUSTER_BACKENDS:  # the engine owns its workers: an id is the process's pid
        assert worker_ids and os.getpid() not in worker_ids
        assert {pid for _, pid, *_ in results} == worker_ids
    else:
        assert worker_ids <= ({0} if backend == "inline" else {0, 1})


def test_process_workers_each_have_their_own_state() -> None:
    with fj.Pool(
        2, "process", initializer=_tasks.load_model_into_worker_state, initargs=("m",)
    ) as pool:
        answers = [pool.submit(_tasks.use_worker_state, i).result() for i in range(20)]
        live = set(pool.worker_pids())
    pid_of = {}
    for worker_id, pid, _, loads, _ in answers:
        assert pid_of.setdefault(worker_id, pid) == pid, "a worker id names one process"
        assert loads == 1
    assert os.getpid() not in pid_of.values()
    assert set(pid_of.values()) <= live


def test_worker_context_outside_a_task_says_where_it_works() -> None:
    with pytest.raises(RuntimeError, match="inside a task"):
        fj.worker_context()


def test_inline_context_is_only_installed_while_its_tasks_run() -> None:
    assert fj.map(_tasks.use_worker_state_or_none, [1], backend="inline") == [0]
    with pytest.raises(RuntimeError):
        fj.worker_context()
