"""``backend="dask"``: forkjoin tasks as Dask futures, on a local cluster or an existing one.

Where it runs:
- ``address=`` a ready ``distributed.Client`` (TLS, custom security: built by the user), or a
  scheduler address ``"tcp://host:8786"`` / ``"tls://host:8786"`` joined with
  ``cluster_options`` passed to ``distributed.Client`` (``security=Security(...)`` for TLS;
  forkjoin never turns it off). ``$DASK_SCHEDULER_ADDRESS`` works as ``address=``.
- Otherwise the Client already current in this process, if the user made one.
- Otherwise a local cluster started on first use: the scheduler in this process, one
  single-threaded worker process per ``workers`` (default: usable CPUs) started by a
  ``dask worker`` process (so a script needs no ``if __name__ == "__main__":`` guard), bound to
  127.0.0.1, dashboards off.

Pools share a connection per address; the last pool to close it closes what forkjoin opened.

Mapping: a task's ``resources`` become Dask worker resources ``CPU`` / ``GPU`` / ``MEMORY``,
which the workers must declare (forkjoin's local cluster declares ``CPU=1`` per worker); the
function and the pool initializer are pickled once and unpickled once per worker; ``fj.shared``
objects are scattered once to every worker (``client.scatter(broadcast=True)``), so a worker
deserialises each once and keeps it. Dask's
``retries`` are off and forkjoin's local cluster sets ``allowed-failures`` to 0: forkjoin's
scheduler retries a task whose worker died, counting attempts as on every backend. A scheduler
forkjoin did not start keeps its own setting (Dask's default: 3), so a task that kills its worker
kills up to that many more before forkjoin hears of it, and isolating a poison item by bisection
costs that many times the worker deaths: joining such a scheduler warns once, naming the setting.
Dask runs tasks on worker threads, which nothing can interrupt, so ``timeout=`` is refused here.
"""

from __future__ import annotations

import os
import threading
import warnings
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import cloudpickle
import distributed
from distributed.scheduler import KilledWorker

from ..core.task import Task
from ..errors import ResourceError
from ..machine import parse_memory, usable_cpu_count
from .base import Capabilities
from .cluster import CRASHED, UNREADABLE, ClusterBackend, with_descendants
from .dask_local import LocalCluster
from .remote_task import TaskSpec, run_remote

# Functions and initializers a worker process keeps unpickled, by key.
KEEP_CODE = 64
_code_lock = threading.Lock()
_code: OrderedDict[str, Any] = OrderedDict()


def _unpack(packed: tuple[str, bytes] | None) -> Any:
    """A function (or initializer) sent by value, unpickled once per worker process."""
    if packed is None:
        return None
    key, data = packed
    with _code_lock:
        obj = _code.get(key)
    if obj is None:
        obj = cloudpickle.loads(data)
        with _code_lock:
            _code[key] = obj
            while len(_code) > KEEP_CODE:
                _code.popitem(last=False)
    return obj


def _entry(
    fn: tuple[str, bytes], spec: TaskSpec, setup: tuple[str, bytes] | None, *shared_values: Any
) -> tuple[Any, ...]:
    """The Dask task: code arrives pickled (unpickled once per worker), fj.shared objects as
    scattered data (deserialised once per worker)."""
    # Global RNGs are per process: reseed them only on a worker that runs one task at a time.
    single_threaded = distributed.get_worker().state.nthreads == 1
    return run_remote(
        _unpack(fn), spec, _unpack(setup), shared_values, seed_globals=single_threaded
    )


class _Connection:
    """A Client (and maybe the local cluster behind it) shared by the pools that use it."""

    def __init__(self, client: Any, cluster: Any, owned: bool, size: int = 0) -> None:
        self.client = client
        self.cluster = cluster  # a dask_local.LocalCluster forkjoin started, else None
        self.owned = owned  # forkjoin opened it, so forkjoin closes it
        self.users = 0
        self.size = size  # worker threads of forkjoin's local cluster (0: ask the scheduler)


_connections_lock = threading.Lock()
_connections: dict[Any, _Connection] = {}


def _start_local(workers: int) -> _Connection:
    workers = workers or usable_cpu_count()
    settings = {
        # Worker deaths are retried by forkjoin's scheduler, not by Dask's.
        "distributed.scheduler.allowed-failures": 0,
        # A task goes to a worker only when it has a free thread: no task waits behind a long
        # one on a busy worker while another worker idles (forkjoin already bounds in-flight).
        "distributed.scheduler.worker-saturation": 1.0,
    }
    cluster = LocalCluster(workers, settings)
    client = None
    try:
        client = distributed.Client(cluster.scheduler, set_as_default=False)
        cluster.wait_for_workers(client)
    except BaseException:
        if client is not None:
            client.close()
        cluster.close()
        raise
    return _Connection(client, cluster, True, workers)


def _allowed_failures(dask_scheduler: Any) -> int:
    """Runs on the scheduler: how often it re-runs a task whose worker died."""
    return int(dask_scheduler.allowed_failures)


def _warn_if_dask_retries_deaths(client: Any) -> None:
    """A scheduler that re-runs tasks whose worker died hides worker deaths from forkjoin."""
    try:
        allowed = client.run_on_scheduler(_allowed_failures)
    except Exception:  # an old scheduler, or one that refuses remote calls: nothing to say
        return
    if allowed:
        warnings.warn(
            f"the Dask scheduler at {client.scheduler.address} re-runs a task whose worker "
            f"died up to {allowed} more time(s) (distributed.scheduler.allowed-failures) "
            f"before forkjoin sees the death: a task that crashes its worker kills "
            f"{allowed + 1} workers per attempt, and isolating a bad item costs that many "
            f"times more. Start the scheduler with allowed-failures set to 0 "
            f"(DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES=0) so that forkjoin's retries= "
            f"counts every death",
            RuntimeWarning,
            stacklevel=6,  # the fj.Pool(...) call that joined the scheduler
        )


def acquire(workers: int = 0, address: Any = None, options: dict[str, Any] | None = None):  # type: ignore[no-untyped-def]
    """The connection for ``address``, opened (or a local cluster started) if needed."""
    if address is None:
        address = os.environ.get("DASK_SCHEDULER_ADDRESS") or None
    if address is None:
        try:
            address = distributed.get_client()  # a Client the user made in this process
        except ValueError:
            address = None
    key = address if address is None or isinstance(address, str) else id(address)
    with _connections_lock:
        connection = _connections.get(key)
        if connection is None or connection.client.status not in ("running", "connecting"):
            if address is None:
                connection = _start_local(workers)
            elif isinstance(address, str):
                client = distributed.Client(address, set_as_default=False, **(options or {}))
                connection = _Connection(client, None, True)
            else:
                connection = _Connection(address, None, False)
            if connection.cluster is None:
                _warn_if_dask_retries_deaths(connection.client)
            _connections[key] = connection
        connection.users += 1
        return key, connection


def release(key: Any) -> None:
    with _connections_lock:
        connection = _connections.get(key)
        if connection is None:
            return
        connection.users -= 1
        if connection.users > 0:
            return
        del _connections[key]
    if connection.owned:
        connection.client.close()
        if connection.cluster is not None:
            connection.cluster.close()


# How long the result of a future that Dask reports done may take to arrive (see _result).
RESULT_FETCH_SECONDS = 30.0


class DaskBackend(ClusterBackend):
    """Runs each forkjoin task as one Dask future."""

    name = "dask"
    engine = "Dask"
    capabilities = Capabilities(
        isolates_crashes=True,
        serializes=True,
        cluster=True,
    )

    def _connect(self, address: Any, options: dict[str, Any]) -> None:
        self._key, self._connection = acquire(self.workers, address, options)
        self._connected = True
        self._client = self._connection.client
        self._scattered: list[Any] = []  # our handles, to check after a worker is lost
        if self.workers == 0:  # the cluster decides: one task in flight per worker thread
            if self._connection.size:  # our local cluster: its size, even while one restarts
                self.workers = self._connection.size
            else:
                info = self._client.scheduler_info()
                threads = sum(w.get("nthreads", 1) for w in info.get("workers", {}).values())
                self.workers = max(1, threads)

    def _pack(self, key: str, obj: Any) -> Any:
        # Code goes by value in the task, not as scattered data: Dask places a task next to its
        # data, so a scattered function would pull every task onto the worker that holds it.
        return (key, cloudpickle.dumps(obj, protocol=5))

    def _put(self, obj: Any) -> Any:
        # fj.shared objects: a copy on every worker, so no worker is preferred for holding it.
        try:
            future = self._client.scatter(obj, broadcast=True, hash=False)
        except OSError:  # a worker died while receiving it: once more, to those left
            future = self._client.scatter(obj, broadcast=True, hash=False)
        self._scattered.append(future)
        return future

    def _after_crash(self) -> None:
        # Scattered data lives in worker memory: if every copy died with its workers, put it
        # again on the next submit (the retry then finds it).
        if any(f.status != "finished" for f in self._scattered):
            with self._lock:
                self._shared.clear()
            self._scattered = [f for f in self._scattered if f.status == "finished"]

    def _resources(self, task: Task) -> dict[str, float] | None:
        if not task.resources:
            return None
        names = {"cpu": "CPU", "gpu": "GPU", "memory": "MEMORY"}
        wanted = {}
        for name, amount in task.resources.items():
            value = parse_memory(amount) if name == "memory" else float(amount)
            if value:
                wanted[names.get(name, name)] = float(value)
        if not wanted:
            return None
        workers = self._client.scheduler_info().get("workers", {}).values()
        offered = [worker.get("resources", {}) for worker in workers]
        if not any(all(o.get(k, 0) >= v for k, v in wanted.items()) for o in offered):
            raise ResourceError(
                f"no Dask worker declares resources {wanted} (workers offer {offered}); start "
                f'workers with --resources "GPU=1" (or ask for less): Dask would otherwise '
                f"keep the task waiting for ever"
            )
        return wanted

    def _launch(self, task: Task, function: Any, spec: TaskSpec, shared: list[Any]) -> Any:
        return self._client.submit(
            _entry,
            function,
            spec,
            self._setup,
            *shared,
            key=f"forkjoin-{self.pool_key[:12]}-{task.task_id}-{task.attempt}",
            pure=False,
            retries=0,
            resources=self._resources(task),
        )

    def _when_done(self, handle: Any, callback: Callable[[], None]) -> None:
        handle.add_done_callback(lambda _: callback())

    def _result(self, handle: Any) -> Any:
        """The finished future's result, fetched within RESULT_FETCH_SECONDS: a CI run hung
        for good here, in Dask's callback thread, after workers were SIGKILLed (the fetch of a
        done future never returned). A fetch that takes longer is a crash of the task: it is
        retried like one (TimeoutError is classified CRASHED)."""
        try:
            return handle.result(timeout=RESULT_FETCH_SECONDS)
        except TimeoutError:
            handle.cancel()
            raise

    def _classify(self, error: BaseException) -> str:
        if isinstance(error, (KilledWorker, OSError, TimeoutError)):
            return CRASHED
        if type(error).__name__ in ("CancelledError", "FutureCancelledError"):
            return CRASHED  # the engine dropped it (its data or worker was lost), not us
        return UNREADABLE  # run_remote never raises: Dask failed to (un)pickle call or reply

    def _cancel(self, handle: Any, force: bool) -> None:
        self._client.cancel([handle], force=force)

    def _disconnect(self) -> None:
        if self._connected:
            self._connected = False
            release(self._key)

    def worker_pids(self) -> list[int]:
        """The local cluster's processes: the ``dask worker`` process and its workers (a
        nanny restarts a dead worker under a new pid)."""
        cluster = self._connection.cluster
        return with_descendants(cluster.pids) if cluster is not None else []
