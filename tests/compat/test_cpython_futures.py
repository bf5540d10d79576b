"""CPython 3.11's own process-pool Executor tests (``test_concurrent_futures``), run with
``forkjoin.Pool`` as the executor type.

The upstream file is loaded from the installed test suite at test time (``_upstream.py``); this
module only builds the test classes the way upstream's ``create_executor_tests`` does, with a
spawn-context mixin whose ``executor_type`` is forkjoin's Pool. Tests that cannot apply, and
known differences, are listed with their reasons in ``expectations.py``.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import unittest
import weakref
from collections.abc import Iterator
from typing import Any

import _upstream
import pytest

import forkjoin as fj

cf = _upstream.load_cpython_futures()


class ForkjoinPool(fj.Pool):
    """``fj.Pool`` under ``ProcessPoolExecutor``'s constructor keywords: the upstream tests build
    their executors as ``executor_type(max_workers=..., mp_context=..., initializer=...)``.
    ``mp_context`` is accepted and not used: forkjoin starts its workers its own way (a fresh
    interpreter per worker, as with ``spawn``); the tests pass the spawn context."""

    def __init__(
        self,
        max_workers: int | None = None,
        mp_context: Any = None,
        initializer: Any = None,
        initargs: tuple[Any, ...] = (),
        *,
        max_tasks_per_child: int | None = None,
    ) -> None:
        extra = {}
        if max_tasks_per_child is not None:
            extra["max_tasks_per_child"] = max_tasks_per_child
        super().__init__(
            max_workers, "process", initializer=initializer, initargs=initargs, **extra
        )
        _created.add(self)


# Upstream tests that fail an assertion leave their executor running (the standard library's
# is stopped at exit); those are shut down after each test, before the leak check runs.
_created: weakref.WeakSet[ForkjoinPool] = weakref.WeakSet()


@pytest.fixture(autouse=True)
def shut_down_abandoned_pools() -> Iterator[None]:
    yield
    for pool in list(_created):
        pool.shutdown(wait=True, cancel_futures=True)
    _created.clear()


class ForkjoinMixin(cf.ProcessPoolSpawnMixin):
    """Upstream's spawn mixin (its ``get_context`` gives the tests their semaphores, queues and
    managers) with forkjoin's Pool as the executor."""

    executor_type = ForkjoinPool


# Upstream's process-pool mixins, as its create_executor_tests() combines them with each
# executor mixin; FutureTests (no executor) and the thread-pool-only classes are not ours.
UPSTREAM_MIXINS = [
    cf.InitializerMixin,
    cf.FailingInitializerMixin,
    cf.ProcessPoolShutdownTest,
    cf.WaitTests,
    cf.AsCompletedTests,
    cf.ProcessPoolExecutorTest,
    cf.ExecutorDeadlockTest,
]


def _class_name(mixin: type) -> str:
    name = mixin.__name__
    for suffix in ("Mixin", "Tests", "Test"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    return f"Forkjoin{name}Test"


for _mixin in UPSTREAM_MIXINS:
    globals()[_class_name(_mixin)] = type(
        _class_name(_mixin), (_mixin, ForkjoinMixin, cf.BaseTestCase), {}
    )
del _mixin


# Upstream runs these three checks as scripts that import the executor by its name from
# concurrent.futures; here the same scripts import forkjoin's Pool.
def _run_script(source: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(source)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


class ForkjoinInterpreterExitTest(unittest.TestCase):
    """Upstream's ``test_interpreter_shutdown``, ``test_submit_after_interpreter_shutdown`` and
    ``test_hang_gh83386`` (``ExecutorShutdownTest``) with ``forkjoin.Pool`` in the script."""

    def test_interpreter_shutdown(self) -> None:
        result = _run_script(
            f"""
            import sys
            sys.path[:0] = {sys.path!r}
            from forkjoin import Pool
            from test_concurrent_futures import sleep_and_print
            if __name__ == "__main__":
                t = Pool(5)
                t.submit(sleep_and_print, 1.0, "apple")
            """
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertFalse(result.stderr)
        self.assertEqual(result.stdout.strip(), "apple")

    def test_submit_after_interpreter_shutdown(self) -> None:
        result = _run_script(
            f"""
            import atexit, sys
            sys.path[:0] = {sys.path!r}
            @atexit.register
            def run_last():
                try:
                    t.submit(id, None)
                except RuntimeError:
                    print("runtime-error")
                    raise
            from forkjoin import Pool
            if __name__ == "__main__":
                t = Pool(5)
                t.submit(id, 42).result()
            """
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn("RuntimeError", result.stderr)
        self.assertEqual(result.stdout.strip(), "runtime-error")

    def test_hang_gh83386(self) -> None:
        result = _run_script(
            f"""
            import sys
            sys.path[:0] = {sys.path!r}
            from forkjoin import Pool
            from test_concurrent_futures import sleep_and_print
            if __name__ == "__main__":
                t = Pool(3)
                t.submit(sleep_and_print, 1.0, "apple")
                t.shutdown(wait=False)
            """
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertFalse(result.stderr)
        self.assertEqual(result.stdout.strip(), "apple")
