"""joblib on forkjoin: scikit-learn's ``n_jobs`` (and any ``joblib.Parallel``) runs on forkjoin
workers, with forkjoin's data plane, crash reporting and resource pinning.

>>> import joblib
>>> import forkjoin.integrations.joblib  # registers the "forkjoin" joblib backend
>>> with joblib.parallel_config(backend="forkjoin", n_jobs=2):  # e.g. around GridSearchCV.fit
...     joblib.Parallel()(joblib.delayed(abs)(-i) for i in range(4))
[0, 1, 2, 3]

Options after the backend name go to the ``fj.Pool`` behind it, e.g.
``parallel_config(backend="forkjoin", forkjoin_backend="threads")`` or
``resources_per_worker={"gpu": 1}``; ``initializer=``/``initargs=`` (given to
``parallel_config`` or ``Parallel``) run once in each worker. joblib hands over batches of
calls; each batch is one forkjoin task whose argument is the batch, so the large arrays inside
it (a training set) travel through shared memory, and the task function is sent to each worker
once.

Warm workers. scikit-learn makes many ``Parallel`` calls (a fit, then a predict; each
``cross_validate``), and each worker pays for starting an interpreter and importing
scikit-learn (about a second). Like joblib's own loky backend, the pool outlives the
``Parallel`` call that started it: the next call with the same shape reuses it, a call with a
different shape replaces it, and it stops after ``IDLE_SHUTDOWN_S`` without a call, at
interpreter exit, or on ``shutdown_warm_pool()``. A failed call (``abort_everything``) stops it
at once, so a task that is still running is not left behind.

    Parallel call 1 ──configure──> warm pool (new) ──terminate──> kept, idle timer armed
    Parallel call 2 ──configure──> same pool (timer disarmed) ──terminate──> kept ...
"""

from __future__ import annotations

import atexit
import threading
from collections.abc import Callable
from typing import Any

from ..engine.pool import Pool, PoolState
from ..errors import BackendUnavailableError
from ..machine import usable_cpu_count

try:
    from joblib._parallel_backends import (
        AutoBatchingMixin,
        FallbackToBackend,
        ParallelBackendBase,
        SequentialBackend,
    )
    from joblib.parallel import register_parallel_backend
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise BackendUnavailableError(
        'the joblib integration needs joblib: pip install "forkjoin[joblib]"'
    ) from exc

NAME = "forkjoin"
# Idle workers are stopped after this long without a Parallel call: long enough for a notebook's
# next cell or a grid search's next fold (loky's default idle_worker_timeout is the same 300 s),
# short enough that a finished script's service does not hold them for hours.
IDLE_SHUTDOWN_S = 300.0
# joblib's per-call options that mean something only to its own memmapping backends.
_JOBLIB_ONLY = {"max_nbytes", "temp_folder", "mmap_mode", "prefer", "require", "verbose", "context"}


def _call(batch: Any) -> Any:
    """The one task function: run joblib's batch of calls."""
    return batch()


class _WarmPool:
    """The one pool kept warm between ``Parallel`` calls (loky keeps one executor the same way).

    Fields are read and written under ``_lock`` only; the idle timer takes it too.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._key: tuple[Any, ...] | None = None
        self._pool: Pool | None = None
        self._users = 0  # Parallel calls using the pool now: the idle timer waits for 0
        self._timer: threading.Timer | None = None

    def acquire(self, key: tuple[Any, ...], make: Callable[[], Pool]) -> Pool:
        with self._lock:
            self._disarm()
            pool = self._pool
            if pool is None or self._key != key or pool.state is not PoolState.RUNNING:
                if pool is not None:  # another shape: the old workers go
                    pool.shutdown(wait=False, cancel_futures=True)
                pool, self._key, self._users = make(), key, 0
                self._pool = pool
            self._users += 1
            return pool

    def release(self, pool: Pool) -> None:
        with self._lock:
            if pool is not self._pool:
                return
            self._users = max(self._users - 1, 0)
            if self._users == 0:
                self._timer = threading.Timer(IDLE_SHUTDOWN_S, self._idle, args=(pool,))
                self._timer.name = "forkjoin-joblib-idle"
                self._timer.daemon = True
                self._timer.start()

    def discard(self, pool: Pool) -> None:
        """Stop ``pool`` now (a failed call): running tasks are cancelled, not waited for."""
        with self._lock:
            if pool is self._pool:
                self._disarm()
                self._pool, self._key, self._users = None, None, 0
        pool.shutdown(wait=True, cancel_futures=True)

    def shutdown(self) -> None:
        with self._lock:
            self._disarm()
            pool, self._pool, self._key, self._users = self._pool, None, None, 0
        if pool is not None:
            pool.shutdown(wait=True)

    def _idle(self, pool: Pool) -> None:
        with self._lock:
            if pool is not self._pool or self._users:
                return
            self._pool, self._key, self._timer = None, None, None
        pool.shutdown(wait=True)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


_warm = _WarmPool()
atexit.register(_warm.shutdown)


def shutdown_warm_pool() -> None:
    """Stop the workers the joblib backend keeps warm between calls (they also stop by
    themselves after ``IDLE_SHUTDOWN_S`` idle, and at interpreter exit)."""
    _warm.shutdown()


class ForkjoinBackend(AutoBatchingMixin, ParallelBackendBase):  # type: ignore[misc]
    """A joblib parallel backend over a ``forkjoin.Pool`` (process workers by default)."""

    supports_retrieve_callback = True
    supports_inner_max_num_threads = False

    def __init__(
        self,
        nesting_level: int | None = None,
        inner_max_num_threads: int | None = None,
        forkjoin_backend: str = "process",
        **pool_options: Any,
    ) -> None:
        super().__init__(nesting_level=nesting_level, inner_max_num_threads=inner_max_num_threads)
        self.forkjoin_backend = forkjoin_backend
        self.pool_options = pool_options
        self._pool: Pool | None = None
        self._workers = 0

    def effective_n_jobs(self, n_jobs: int | None) -> int:
        if n_jobs == 0:
            raise ValueError("n_jobs == 0 in Parallel has no meaning")
        if n_jobs is None:
            return 1
        if n_jobs < 0:
            return max(usable_cpu_count() + 1 + n_jobs, 1)
        return n_jobs

    def configure(self, n_jobs: int | None = 1, parallel: Any = None, **backend_kwargs: Any) -> int:
        workers = self.effective_n_jobs(n_jobs)
        if workers == 1:
            # As joblib's process backends do: one job runs in the caller, with no worker to
            # start (a fit with n_jobs=1 must not pay a process start-up).
            raise FallbackToBackend(SequentialBackend(nesting_level=self.nesting_level))
        self.parallel = parallel
        options = {**self.pool_options}
        options.update({k: v for k, v in backend_kwargs.items() if k not in _JOBLIB_ONLY})
        if self._pool is not None:
            self._release()
        key = (workers, self.forkjoin_backend, _options_key(options))
        self._pool = _warm.acquire(
            key, lambda: Pool(workers, backend=self.forkjoin_backend, **options)
        )
        self._workers = workers
        return workers

    def submit(self, func: Any, callback: Any = None) -> Any:
        if self._pool is None:
            raise RuntimeError("the forkjoin joblib backend is not configured (or terminated)")
        future = self._pool.submit(_call, func)
        if callback is not None:
            future.add_done_callback(callback)
        return future

    def retrieve_result_callback(self, future: Any) -> Any:
        # A task's exception is re-raised as forkjoin's TaskError, which is also an instance
        # of the original type: `except ValueError` in scikit-learn still catches it.
        return future.result()

    def terminate(self) -> None:
        """The Parallel call is over: its pool stays warm for the next one."""
        self._release()
        self.reset_batch_stats()

    def abort_everything(self, ensure_ready: bool = True) -> None:
        """A task failed: drop the rest, stop what runs, and be ready for the next call."""
        if self._pool is not None:
            pool, self._pool = self._pool, None
            _warm.discard(pool)
        if ensure_ready and self.parallel is not None:
            self.configure(n_jobs=self.parallel.n_jobs, parallel=self.parallel)

    def _release(self) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            _warm.release(pool)


def _options_key(options: dict[str, Any]) -> tuple[Any, ...]:
    """Pool options as a comparable key: equal values share a pool; objects (an initializer, its
    arguments) by identity, so a new initializer always gets fresh workers."""

    def part(value: Any) -> Any:
        if isinstance(value, (str, int, float, bool, type(None))):
            return value
        if isinstance(value, dict):
            return ("dict", tuple(sorted((str(k), part(v)) for k, v in value.items())))
        if isinstance(value, (list, tuple)):
            return ("seq", tuple(part(v) for v in value))
        return ("id", id(value))

    return tuple(sorted((name, part(value)) for name, value in options.items()))


def register() -> None:
    """Make ``backend="forkjoin"`` known to joblib (done on import of this module)."""
    register_parallel_backend(NAME, ForkjoinBackend)


register()
