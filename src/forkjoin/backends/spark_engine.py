"""``backend="spark"``: forkjoin tasks on Spark, through host jobs that each run a worker.

::

    engine --Task--> SparkBackend.submit --HostCall--> Lane (one per resource profile)
                         |  function and initializer        |  hosts: long one-partition Spark
                         |  pickled once per pool;          |  jobs, each a forkjoin worker in a
                         |  fj.shared objects sent once     |  Spark Python worker (spark_hosts)
                         v  per host                        v
    done(task, outcome) <-- run_remote's reply, or the host's loss (a crash) / a timeout

Where it runs: ``spark_session.py`` (a local ``local[N]`` on 127.0.0.1 with the UI off, the
user's SparkSession, or a master given as ``address=``).

Why hosts (measured with ``benchmarks/bench_spark.py --designs``; numbers in the benchmarks
README): a one-partition Spark job per forkjoin task costs 0.1-0.7 s of scheduling on a local
Spark, a batch of tasks as one job's partitions ~45 ms a task and returns nothing until the
whole batch ends, a call to a host job ~1 ms. Spark still places and starts every host by its
``ResourceProfile`` and replaces a lost one; forkjoin sends the calls.

Mapping: Spark's task retries are off (``spark.task.maxFailures=1`` on sessions forkjoin builds)
and forkjoin's scheduler retries a task whose worker died, counting attempts as on every backend;
a task past its ``timeout`` is interrupted in its Python worker (the host runs on the worker's
main thread, so an alarm reaches it), and a host still busy ``TIMEOUT_GRACE`` seconds later has
its job cancelled, which kills the worker; ``resources={"gpu": 1}`` becomes a task
``ResourceProfile`` (stage-level scheduling) for that lane's hosts, after a check that some
executor has it: a request none can meet is a ``ResourceError``, not a job pending for ever.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from concurrent.futures import CancelledError, Future
from typing import Any

import cloudpickle
import pyspark  # noqa: F401 - a missing pyspark fails here: BackendUnavailableError, [spark]

from ..core.task import Task
from ..errors import ResourceError
from ..machine import parse_memory
from . import spark_session
from .base import Capabilities
from .cluster import CANCELLED, CRASHED, UNREADABLE, ClusterBackend
from .protocol import RemoteKind, RemoteReply, view
from .remote_task import TaskSpec
from .spark_hosts import HostCall, HostLost, Lane, Listener

_lanes_lock = threading.Lock()


def _start_job(
    context: Any, partition: Callable[..., Any], group: str, profile: Any
) -> Future[Any]:
    """A host's one-partition job, run by its own thread (collect() blocks)."""
    future: Future[Any] = Future()
    future.set_running_or_notify_cancel()

    def run() -> None:
        try:
            context.setJobGroup(group, "forkjoin worker host", interruptOnCancel=True)
            rdd = context.parallelize([0], 1).mapPartitions(partition)
            if profile is not None:
                rdd = rdd.withResources(profile)
            future.set_result(rdd.collect())
        except BaseException as exc:  # noqa: BLE001 - the host thread reads why
            future.set_exception(exc)

    threading.Thread(target=run, name="forkjoin-spark-job", daemon=True).start()
    return future


def _close_lanes(shared: dict[str, Any]) -> None:
    """The last pool on a Spark closed: end its hosts and the driver's socket."""
    for lane in list(shared["lanes"].values()):
        lane.close()
    shared["listener"].close()


class _Unreadable(Exception):
    """The reply could not be pickled in the worker or unpickled here."""


class SparkBackend(ClusterBackend):
    """Runs forkjoin tasks on Spark host jobs."""

    name = "spark"
    engine = "Spark"
    capabilities = Capabilities(
        isolates_crashes=True,
        supports_timeout=True,
        serializes=True,
        cluster=True,
    )

    def _connect(self, address: Any, options: dict[str, Any]) -> None:
        self._key, self._connection = spark_session.acquire(self.workers, address, options)
        self._connected = True
        self._context = self._connection.context
        if self.workers == 0:  # the cluster decides: one host per core it has
            self.workers = max(1, int(self._context.defaultParallelism))
        shared = self._connection.shared
        with _lanes_lock:
            if "listener" not in shared:  # the first pool on this Spark: hosts serve them all
                host = self._context.getConf().get("spark.driver.host", "127.0.0.1")
                shared["listener"] = Listener(host)
                shared["lanes"] = {}
                self._connection.on_close.append(lambda: _close_lanes(shared))
        self._listener: Listener = shared["listener"]
        self._lanes: dict[Any, Lane] = shared["lanes"]

    def _put(self, obj: Any) -> Any:
        return obj  # fj.shared: held here, sent to each host once with the first call needing it

    def _pack(self, key: str, obj: Any) -> Any:
        return (key, cloudpickle.dumps(obj, protocol=5))

    # -- lanes and resources ---------------------------------------------------------------------

    def _lane_for(self, task: Task) -> Lane:
        """The hosts for the task's resources, shared by every pool on this Spark: up to one
        per core of the cluster (each pool's scheduler bounds its own tasks in flight)."""
        key = tuple(sorted(task.resources.items())) if task.resources else ()
        with _lanes_lock:
            lane = self._lanes.get(key)
        if lane is not None:
            return lane
        profile = self._profile_for(task.resources or {})
        size = max(self.workers, int(self._context.defaultParallelism))
        context = self._context
        with _lanes_lock:
            lane = self._lanes.get(key)
            if lane is None:
                lane = self._lanes[key] = Lane(
                    size,
                    self._listener,
                    lambda partition, group: _start_job(context, partition, group, profile),
                    context.cancelJobGroup,
                    f"forkjoin-{len(self._lanes)}",
                )
        return lane

    def _profile_for(self, resources: Mapping[str, Any]) -> Any:
        """The task ResourceProfile for a request (None: Spark's default, one cpu)."""
        wanted = {}
        for name, amount in resources.items():
            value = parse_memory(amount) if name == "memory" else float(amount)
            if value:
                wanted[name] = float(value)
        offered = self._executor_offer()
        short = {n: v for n, v in wanted.items() if n != "memory" and offered.get(n, 0) < v}
        if short:
            raise ResourceError(
                f"no Spark executor has {short}: each offers {offered}; ask for less, or give "
                f"executors the resource (spark.executor.resource.gpu.amount=1 and a discovery "
                f"script): Spark would otherwise keep the job waiting for ever"
            )
        cpus = int(wanted.get("cpu", 1))
        extra = {n: v for n, v in wanted.items() if n not in ("cpu", "memory")}
        if (cpus == 1 and not extra) or self._context.master.startswith("local"):
            return None  # a local Spark has no stage-level scheduling; its offer was checked
        from pyspark.resource import ResourceProfileBuilder, TaskResourceRequests

        requests = TaskResourceRequests().cpus(cpus)
        for name, amount in extra.items():
            requests = requests.resource(name, amount)
        return ResourceProfileBuilder().require(requests).build

    def _executor_offer(self) -> dict[str, float]:
        conf = self._context.getConf()
        if self._context.master.startswith("local"):
            cores = float(self._context.defaultParallelism)
            prefix = "spark.driver.resource."  # a local Spark's tasks run in the driver
        else:
            cores = float(conf.get("spark.executor.cores", "1"))
            prefix = "spark.executor.resource."
        offer = {"cpu": cores}
        for key, value in conf.getAll():
            if key.startswith(prefix) and key.endswith(".amount"):
                offer[key[len(prefix) : -len(".amount")]] = float(value)
        return offer

    # -- calls -----------------------------------------------------------------------------------

    def _launch(self, task: Task, function: Any, spec: TaskSpec, shared: list[Any]) -> Any:
        lane = self._lane_for(task)
        spec_bytes = cloudpickle.dumps(spec, protocol=5)  # unpicklable input: refused here
        setup_key, setup = self._setup if self._setup is not None else (None, None)
        call = HostCall(
            function[0], function[1], setup_key, setup, spec_bytes,
            dict(zip(spec.shared_ids, shared, strict=True)),
        )  # fmt: skip
        return lane, lane.submit(call, task.timeout)

    def _when_done(self, handle: Any, callback: Callable[[], None]) -> None:
        handle[1].add_done_callback(lambda _: callback())

    def _result(self, handle: Any) -> Any:
        reply = view(RemoteReply, handle[1].result())
        if reply.kind == RemoteKind.UNREADABLE:
            raise _Unreadable(reply.detail)
        return reply

    def _classify(self, error: BaseException) -> str:
        if isinstance(error, CancelledError):
            return CANCELLED
        if isinstance(error, _Unreadable):
            return UNREADABLE
        if isinstance(error, HostLost):
            return CRASHED
        return CRASHED

    def _cancel(self, handle: Any, force: bool) -> None:
        lane, future = handle
        if future.cancel():
            return  # still queued: no host will take it
        if force:
            lane.kill(future)

    def _disconnect(self) -> None:
        if self._connected:
            self._connected = False
            spark_session.release(self._key)

    def worker_pids(self) -> list[int]:
        return self._connection.pids() if self._connection.owned else []


def _spark_message(error: BaseException) -> str:
    """The lines of a Spark job error that say what happened (py4j adds pages of JVM stack)."""
    text = str(error)
    keep = [
        line.strip()
        for line in text.splitlines()
        if line.strip() and not line.strip().startswith("at ")
    ]
    return " | ".join(keep[:6])[:1500] or type(error).__name__
