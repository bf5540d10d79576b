"""joblib on forkjoin: scikit-learn's ``n_jobs`` (and any ``joblib.Parallel``) runs on forkjoin
workers, with forkjoin's data plane, crash reporting and resource pinning.

>>> import joblib
>>> import forkjoin.integrations.joblib  # registers the "forkjoin" joblib backend
>>> with joblib.parallel_config(backend="forkjoin", n_jobs=2):  # e.g. around GridSearchCV.fit
...     joblib.Parallel()(joblib.delayed(abs)(-i) for i in range(4))
[0, 1, 2, 3]

Options after the backend name go to the ``fj.Pool`` behind it, e.g.
``parallel_config(backend="forkjoin", forkjoin_backend="threads")`` or
``resources_per_worker={"gpu": 1}``. joblib hands over batches of calls; each batch is one
forkjoin task whose argument is the batch, so the large arrays inside it (a training set) travel
through shared memory, and the task function is sent to each worker once.
"""

from __future__ import annotations

from typing import Any

from ..engine.pool import Pool
from ..errors import BackendUnavailableError
from ..machine import usable_cpu_count

try:
    from joblib._parallel_backends import AutoBatchingMixin, ParallelBackendBase
    from joblib.parallel import register_parallel_backend
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise BackendUnavailableError(
        'the joblib integration needs joblib: pip install "forkjoin[joblib]"'
    ) from exc

NAME = "forkjoin"


def _call(batch: Any) -> Any:
    """The one task function: run joblib's batch of calls."""
    return batch()


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
        self.parallel = parallel
        if self._pool is None or self._workers != workers:
            self.terminate()
            self._pool = Pool(workers, backend=self.forkjoin_backend, **self.pool_options)
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
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    def abort_everything(self, ensure_ready: bool = True) -> None:
        """A task failed: drop the rest, stop what runs, and be ready for the next call."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        if ensure_ready and self.parallel is not None:
            self.configure(n_jobs=self.parallel.n_jobs, parallel=self.parallel)


def register() -> None:
    """Make ``backend="forkjoin"`` known to joblib (done on import of this module)."""
    register_parallel_backend(NAME, ForkjoinBackend)


register()
