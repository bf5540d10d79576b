"""The one place that says which upstream tests do not run as-is on forkjoin, and why.

- ``NOT_APPLICABLE``: the test reads the standard library's or another backend's internals
  (``ProcessPoolExecutor._processes``, ``_executor_manager_thread``, ``_mp_context``...), or
  builds the standard library's executor itself: it says nothing about forkjoin. Skipped.
- ``DIFFERENCES``: forkjoin behaves differently on purpose; the reason is the documentation
  (README, "Errors"). Run as strict xfail: if forkjoin starts to match, the entry must go.
- ``FINDINGS``: an engine fault these suites found, written up with a repro in
  ``notes/compat-findings.md`` under its number; the entry goes when the engine is fixed.
  ``run=False`` for the ones that hang (they would only burn the timeout).

Keys are the end of a pytest node id: ``Class::test`` or ``test_name[params]``; a key without
``[`` matches every parametrization of that test.
"""

from __future__ import annotations

from typing import NamedTuple

import pytest


class Finding(NamedTuple):
    """An engine fault: ``ref`` is "issue 15 item N" (known when these suites were wired) or
    "compat finding N" (``notes/compat-findings.md``)."""

    ref: str
    summary: str
    run: bool = True


_PRIVATE = "reads ProcessPoolExecutor's private "

NOT_APPLICABLE: dict[str, str] = {
    # CPython test_concurrent_futures
    "ForkjoinProcessPoolShutdownTest::test_processes_terminate": _PRIVATE + "_processes",
    "ForkjoinProcessPoolShutdownTest::test_context_manager_shutdown": (
        "builds futures.ProcessPoolExecutor itself and reads its _processes"
    ),
    "ForkjoinProcessPoolShutdownTest::test_del_shutdown": (
        "builds futures.ProcessPoolExecutor itself; reads _executor_manager_thread, _call_queue"
    ),
    "ForkjoinProcessPoolShutdownTest::test_shutdown_no_wait": (
        "builds futures.ProcessPoolExecutor itself; reads _executor_manager_thread, _call_queue"
    ),
    "ForkjoinProcessPoolShutdownTest::test_interpreter_shutdown": (
        "script imports the executor by name from concurrent.futures; "
        "ForkjoinInterpreterExitTest runs the same script with forkjoin.Pool"
    ),
    "ForkjoinProcessPoolShutdownTest::test_submit_after_interpreter_shutdown": (
        "script imports the executor by name from concurrent.futures; "
        "ForkjoinInterpreterExitTest runs the same script with forkjoin.Pool"
    ),
    "ForkjoinProcessPoolShutdownTest::test_hang_gh83386": (
        "script imports the executor by name from concurrent.futures; "
        "ForkjoinInterpreterExitTest runs the same script with forkjoin.Pool"
    ),
    "ForkjoinFailingInitializerTest::test_initializer": _PRIVATE + "_broken",
    "ForkjoinProcessPoolExecutorTest::test_killed_child": _PRIVATE + "_processes",
    "ForkjoinProcessPoolExecutorTest::test_saturation": _PRIVATE + "_processes, _max_workers",
    "ForkjoinProcessPoolExecutorTest::test_idle_process_reuse_one": _PRIVATE + "_processes",
    "ForkjoinProcessPoolExecutorTest::test_idle_process_reuse_multiple": _PRIVATE + "_processes",
    "ForkjoinProcessPoolExecutorTest::test_max_tasks_per_child": _PRIVATE + "_processes",
    "ForkjoinProcessPoolExecutorTest::test_max_tasks_per_child_defaults_to_spawn_context": (
        _PRIVATE + "_mp_context"
    ),
    "ForkjoinExecutorDeadlockTest::test_shutdown_deadlock_pickle": (
        _PRIVATE + "_executor_manager_thread"
    ),
}

_UNPICKLE_SIDE = (
    "a call or result that cannot be unpickled fails that one future with SerializationError "
    "and the pool stays usable; the standard library breaks the whole pool (BrokenProcessPool)"
)
_EXIT_IS_CRASH = (
    "sys.exit() in a task is a crash (WorkerCrashedError, RELIABILITY row 9: never a success); "
    "the standard library re-raises SystemExit in the caller"
)

_LOKY_BY_NAME = "runs joblib's own loky backend by name; nothing in it reaches forkjoin"
_SCRIPT = (
    "runs a script in a fresh interpreter that names backend='forkjoin' without importing "
    "forkjoin.integrations.joblib, which registers it (joblib discovers no backend plugins)"
)
NOT_APPLICABLE.update(
    {
        # joblib test_parallel.py
        "test_threadpool_limitation_in_child_loky": _LOKY_BY_NAME,
        "test_threadpool_limitation_in_child_context": _LOKY_BY_NAME,
        "test_threadpool_limitation_in_child_override": _LOKY_BY_NAME,
        "test_initializer_reused": _LOKY_BY_NAME,
        "test_initializer_not_reused": _LOKY_BY_NAME,
        "test_nested_loop_with_exception_with_loky": _LOKY_BY_NAME,
        "test_loky_reuse_workers": _LOKY_BY_NAME,
        "test_parallel_byteorder_corruption": _LOKY_BY_NAME,
        "test_backend_hinting_and_constraints": (
            "asserts that joblib's default backend is loky; here forkjoin is the default"
        ),
        "test_parallel_with_interactively_defined_functions": _SCRIPT,
        "test_parallel_with_unpicklable_functions_in_args": _SCRIPT,
    }
)

_NO_MEMMAP = (
    "large arrays reach the workers as ndarrays through forkjoin's shared-memory data plane, "
    "not as np.memmap files: joblib's max_nbytes memmapping belongs to its own backends"
)

_INTERRUPT = (
    "a task raising KeyboardInterrupt gives a TaskError (original_type 'KeyboardInterrupt'), "
    "raised once, never retried: re-raising KeyboardInterrupt in the caller would look like "
    "the user's own Ctrl-C"
)

DIFFERENCES: dict[str, str] = {
    "test_error_capture": _INTERRUPT,
    "ForkjoinExecutorDeadlockTest::test_exit_during_result_unpickle_in_result_handler": (
        _UNPICKLE_SIDE
    ),
    # joblib test_parallel.py
    "test_auto_memmap_on_arrays_from_generator": _NO_MEMMAP,
    "test_memmapping_leaks": _NO_MEMMAP,
    # CPython test_concurrent_futures
    "ForkjoinProcessPoolShutdownTest::test_cancel_futures": (
        "shutdown(cancel_futures=True) cancels every task no worker has started; the standard "
        "library also runs the max_workers+1 it already moved to its call queue (here the pool "
        "is shut down before its workers are up, so all 50 are cancelled)"
    ),
    "ForkjoinProcessPoolExecutorTest::test_max_workers_negative": (
        "the ValueError names forkjoin's argument: 'workers must be a positive integer'"
    ),
    "ForkjoinProcessPoolExecutorTest::test_traceback": (
        "a task's exception comes back as TaskError[RuntimeError], a subclass of the original "
        "type that also names the item; the remote traceback is its __cause__"
    ),
    "ForkjoinExecutorDeadlockTest::test_error_at_task_unpickle": _UNPICKLE_SIDE,
    "ForkjoinExecutorDeadlockTest::test_error_during_result_unpickle_in_result_handler": (
        _UNPICKLE_SIDE
    ),
    "ForkjoinExecutorDeadlockTest::test_exit_during_func_exec_on_worker": _EXIT_IS_CRASH,
    "ForkjoinExecutorDeadlockTest::test_exit_during_result_pickle_on_worker": _EXIT_IS_CRASH,
}

FINDINGS: dict[str, Finding] = {
    # Empty: every engine fault these suites found (issue 15's list) is fixed, and its upstream
    # tests now pass. A new one goes here with a repro in notes, until the engine is fixed.
}


def _lookup(nodeid: str, table: dict) -> object | None:
    name = nodeid.rsplit("/", 1)[-1].split("::", 1)[-1]  # "Class::test[params]" or "test[p]"
    bare = name.split("[", 1)[0]
    for key in (name, bare):
        for candidate, value in table.items():
            if key == candidate or key.endswith("::" + candidate):
                return value
    return None


def apply_expectations(item: pytest.Item) -> None:
    reason = _lookup(item.nodeid, NOT_APPLICABLE)
    if reason is not None:
        item.add_marker(pytest.mark.skip(reason=f"not applicable: {reason}"))
        return
    difference = _lookup(item.nodeid, DIFFERENCES)
    if difference is not None:
        reason = f"documented difference: {difference}"
        item.add_marker(pytest.mark.xfail(reason=reason, strict=True))
        return
    finding = _lookup(item.nodeid, FINDINGS)
    if isinstance(finding, Finding):
        item.add_marker(
            pytest.mark.xfail(
                reason=f"{finding.ref}: {finding.summary}",
                run=finding.run, strict=False,
            )
        )  # fmt: skip
