"""``backend="ray"``: forkjoin tasks as Ray tasks, on a local Ray or an existing cluster.

Where it runs:
- Ray already initialised in this process (``ray.init(...)`` by the user): that connection.
- ``address="auto"``, ``"ray://host:10001"``, ``"host:6379"`` or ``$RAY_ADDRESS``: that cluster.
  Ray's own authentication applies: with ``RAY_AUTH_MODE=token`` (and the token in
  ``RAY_AUTH_TOKEN`` or its token file) Ray sends it; forkjoin never turns authentication off.
  ``cluster_options=`` are passed to ``ray.init`` (``runtime_env``, ``namespace``...).
- Otherwise a local, single-node Ray started on first use, bound to 127.0.0.1 only and with no
  dashboard: Ray's servers listen on the node's IP, so the node's IP is made the loopback one
  (Ray's single-node mode, as on macOS). Use ``ray start`` and ``address=`` to span machines.

One Ray connection serves every forkjoin pool in the process; the last pool to close stops a Ray
that forkjoin started (or disconnects from a cluster it joined), never one the user started.

Mapping: a task's ``resources`` become ``num_cpus`` / ``num_gpus`` / ``memory`` (default one
CPU); the function, the pool initializer and ``fj.shared`` objects go to the object store once
(``ray.put``); Ray's retries are off (``max_retries=0``) because forkjoin's scheduler retries a
task whose worker died, counting attempts the same way on every backend; a task past its timeout
is interrupted in its worker (tasks run on the worker's main thread, so an alarm reaches them).
"""

from __future__ import annotations

import os
import sys
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import psutil
import ray
import ray.exceptions

from ..core.task import Task
from ..errors import ResourceError
from ..machine import parse_memory, usable_cpu_count
from .base import Capabilities
from .cluster import (
    CANCELLED,
    CRASHED,
    UNREADABLE,
    ClusterBackend,
    started_processes,
    with_descendants,
)
from .remote_task import TaskSpec, run_remote

# Functions a Ray worker process keeps unpickled, by pool and function key.
KEEP_FUNCTIONS = 64

_connection_lock = threading.Lock()
_connection_users = 0  # pools using a Ray that forkjoin started or joined
_connection_owned = False  # whether forkjoin called ray.init (and so ray.shutdown)
_started: set[int] = set()  # the processes of a local Ray that forkjoin started

# -- the worker side -----------------------------------------------------------------------------

_worker_functions: OrderedDict[str, Any] = OrderedDict()


def _entry(
    boxed_function: tuple[str, list[Any]],
    spec: TaskSpec,
    boxed_setup: tuple[str, list[Any]] | None,
    *shared_values: Any,
) -> tuple[Any, ...]:
    """The Ray task. Code comes as (key, [reference]): a reference inside a list is not
    resolved by Ray, so each worker process fetches and unpickles it once, by key."""
    fn = _fetch_code(boxed_function)
    setup = _fetch_code(boxed_setup) if boxed_setup is not None else None
    return run_remote(fn, spec, setup, shared_values)


def _fetch_code(boxed: tuple[str, list[Any]]) -> Any:
    key, box = boxed
    code = _worker_functions.get(key)
    if code is None:
        code = ray.get(box[0])
        _worker_functions[key] = code
        if len(_worker_functions) > KEEP_FUNCTIONS:
            _worker_functions.popitem(last=False)
    return code


_remote_entry: Any = None


def _remote() -> Any:
    global _remote_entry
    if _remote_entry is None:
        _remote_entry = ray.remote(max_retries=0, retry_exceptions=False)(_entry)
    return _remote_entry


# -- the connection ------------------------------------------------------------------------------


def _caller_path() -> str:
    """The caller's import path, less the interpreter's own folders (workers have those)."""
    own = (sys.prefix, sys.base_prefix, sys.exec_prefix)
    folders = [
        os.path.abspath(entry or os.getcwd())
        for entry in sys.path
        if not (entry and entry.startswith(own))
    ]
    return os.pathsep.join(dict.fromkeys(f for f in folders if os.path.isdir(f)))


def _start_local(workers: int, options: dict[str, Any]) -> None:
    """A single-node Ray bound to 127.0.0.1, with no dashboard."""
    import ray._private.ray_constants as ray_constants

    saved = os.environ.get(ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR)
    # Ray's processes read this at start: servers bind to the node IP, here the loopback one.
    os.environ[ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        settings: dict[str, Any] = {
            "address": "local",  # a new Ray of our own, even if another runs on this machine
            "num_cpus": workers or usable_cpu_count(),
            "include_dashboard": False,
            "log_to_driver": True,
            # As forkjoin's process workers do: import what the caller can (its script's
            # folder, a tests/ directory), not only what is installed.
            "runtime_env": {"env_vars": {"PYTHONPATH": _caller_path()}},
        }
        settings.update(options)
        ray.init(**settings)
    finally:
        if saved is None:
            os.environ.pop(ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR, None)
        else:
            os.environ[ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR] = saved


def acquire(workers: int = 0, address: Any = None, options: dict[str, Any] | None = None) -> None:
    """Use Ray from one more pool: initialise it (start or join) if nobody has."""
    global _connection_users, _connection_owned, _started
    with _connection_lock:
        if not ray.is_initialized():
            if address is None and not os.environ.get("RAY_ADDRESS"):
                before = {child.pid for child in psutil.Process().children()}
                _start_local(workers, dict(options or {}))
                _started = started_processes(before)
            else:
                ray.init(address=address, **(options or {}))
            _connection_owned = True
            _connection_users = 0
        _connection_users += 1


def release() -> None:
    """One pool fewer; the last one stops the Ray that forkjoin started or joined."""
    global _connection_users, _connection_owned
    with _connection_lock:
        _connection_users = max(0, _connection_users - 1)
        if _connection_users == 0 and _connection_owned:
            _connection_owned = False
            if ray.is_initialized():
                ray.shutdown()


def local_processes() -> list[int]:
    """PIDs of the local Ray that forkjoin started (its servers and workers), for leak checks."""
    return with_descendants(_started) if ray.is_initialized() else []


def _check_feasible(settings: dict[str, Any]) -> None:
    """Refuse a request no node has (Ray would keep such a task pending for ever)."""
    need = {"CPU": settings["num_cpus"], "GPU": settings.get("num_gpus", 0)}
    need["memory"] = settings.get("memory", 0)
    need.update(settings.get("resources", {}))
    need = {name: amount for name, amount in need.items() if amount}
    nodes = [node["Resources"] for node in ray.nodes() if node.get("Alive")]
    if any(all(node.get(name, 0) >= amount for name, amount in need.items()) for node in nodes):
        return
    offered = "; ".join(
        ", ".join(f"{name}={value:g}" for name, value in sorted(node.items()) if ":" not in name)
        for node in nodes
    )
    raise ResourceError(
        f"no node of the Ray cluster has {need}: its nodes offer [{offered}]; ask for less, "
        f"or add a node that has it (ray start --num-gpus=...)"
    )


class RayBackend(ClusterBackend):
    """Runs each forkjoin task as one Ray task."""

    name = "ray"
    engine = "Ray"
    capabilities = Capabilities(
        isolates_crashes=True,
        supports_timeout=True,
        serializes=True,
        cluster=True,
    )

    def _connect(self, address: Any, options: dict[str, Any]) -> None:
        acquire(self.workers, address, options)
        self._connected = True
        self._remote_by_resources: dict[Any, Any] = {}
        if self.workers == 0:  # the cluster decides: one task in flight per CPU it has
            self.workers = max(1, int(ray.cluster_resources().get("CPU", 1)))

    def _put(self, obj: Any) -> Any:
        return ray.put(obj)

    def _pack(self, key: str, obj: Any) -> Any:
        return (key, [ray.put(obj)])

    def _remote_for(self, task: Task) -> Any:
        key = tuple(sorted(task.resources.items())) if task.resources else ()
        remote = self._remote_by_resources.get(key)
        if remote is None:
            requested = dict(task.resources or {})
            settings: dict[str, Any] = {"num_cpus": float(requested.pop("cpu", 1))}
            if "gpu" in requested:
                settings["num_gpus"] = float(requested.pop("gpu"))
            if "memory" in requested:
                settings["memory"] = parse_memory(requested.pop("memory"))
            if requested:
                settings["resources"] = {k: float(v) for k, v in requested.items()}
            _check_feasible(settings)
            remote = self._remote_by_resources[key] = _remote().options(**settings)
        return remote

    def _launch(self, task: Task, function: Any, spec: TaskSpec, shared: list[Any]) -> Any:
        return self._remote_for(task).remote(function, spec, self._setup, *shared)

    def _when_done(self, handle: Any, callback: Callable[[], None]) -> None:
        handle.future().add_done_callback(lambda _: callback())

    def _result(self, handle: Any) -> Any:
        return ray.get(handle)

    def _classify(self, error: BaseException) -> str:
        if isinstance(error, ray.exceptions.TaskCancelledError):
            return CANCELLED
        if isinstance(error, ray.exceptions.RayTaskError):
            # run_remote never raises: Ray failed to pickle the reply or unpickle the call.
            return UNREADABLE
        return CRASHED  # WorkerCrashedError, NodeDiedError, OutOfMemoryError, ObjectLostError...

    def _cancel(self, handle: Any, force: bool) -> None:
        ray.cancel(handle, force=force)

    def _disconnect(self) -> None:
        if self._connected:
            self._connected = False
            release()

    def worker_pids(self) -> list[int]:
        return local_processes()
