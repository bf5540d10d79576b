"""Which Spark a ``backend="spark"`` pool runs on: start, join or borrow a SparkSession.

- ``address=`` a ``SparkSession`` (or ``SparkContext``) the user built: used as is, never
  stopped by forkjoin.
- ``address="spark://host:7077"``, ``"yarn"``, ``"k8s://https://..."``, ``"local-cluster[...]"``:
  a session whose master is that, built with ``cluster_options=`` as Spark settings
  (``{"spark.authenticate": "true", "spark.authenticate.secret": ...}``, TLS's
  ``spark.ssl.*``...). The engine's security settings are passed through and never turned off.
- Otherwise the SparkSession already active in this process, if the user made one.
- Otherwise a local Spark, ``local[N]``, started on first use: the driver binds to 127.0.0.1,
  the UI is off and so is the console progress bar (forkjoin draws its own).

Every pool on the same Spark shares one connection; the last pool to close stops a Spark that
forkjoin started, and the JVM with it (pyspark keeps its JVM until the interpreter exits; a
library must not leave one behind), never one the user started.
"""

from __future__ import annotations

import os
import shutil
import sys
import threading
from typing import Any

import psutil

from ..errors import BackendUnavailableError
from ..machine import usable_cpu_count
from .cluster import started_processes, with_descendants

# The driver's heap for a local Spark forkjoin starts: forkjoin's work runs in Python workers,
# the JVM only schedules it and carries bytes; 1 GiB leaves room on a shared machine.
LOCAL_DRIVER_MEMORY = "1g"

# Settings of a local Spark forkjoin starts (cluster_options= may override any of them).
LOCAL_SETTINGS = {
    "spark.ui.enabled": "false",
    "spark.ui.showConsoleProgress": "false",
    "spark.driver.bindAddress": "127.0.0.1",
    "spark.driver.host": "127.0.0.1",
    "spark.driver.memory": LOCAL_DRIVER_MEMORY,
    # forkjoin's scheduler retries a task whose worker died, counting attempts as on every
    # backend: Spark's own task retries stay off (1 attempt), as for Ray and Dask.
    "spark.task.maxFailures": "1",
    "spark.log.level": "ERROR",
}


def java_executable() -> str | None:
    """The ``java`` pyspark would run: ``$JAVA_HOME/bin/java``, else the one on PATH."""
    home = os.environ.get("JAVA_HOME")
    if home:
        candidate = os.path.join(home, "bin", "java")
        return candidate if os.access(candidate, os.X_OK) else None
    return shutil.which("java")


def require_java() -> str:
    java = java_executable()
    if java is None:
        where = (
            f"JAVA_HOME={os.environ['JAVA_HOME']} has no bin/java"
            if os.environ.get("JAVA_HOME")
            else "no java on PATH and JAVA_HOME is not set"
        )
        raise BackendUnavailableError(
            f"backend 'spark' needs Java 17 or 21 ({where}); install a JDK "
            f"(apt-get install openjdk-17-jre-headless, or brew install openjdk@17) and set "
            f"JAVA_HOME, or pass address= a Spark cluster's master"
        )
    return java


def caller_path() -> str:
    """The caller's import path, less the interpreter's own folders (workers have those), so
    Spark's Python workers import what the caller can (a script's folder, tests/)."""
    own = (sys.prefix, sys.base_prefix, sys.exec_prefix)
    folders = [
        os.path.abspath(entry or os.getcwd())
        for entry in sys.path
        if not (entry and entry.startswith(own))
    ]
    return os.pathsep.join(dict.fromkeys(f for f in folders if os.path.isdir(f)))


class SparkConnection:
    """A SparkSession shared by the pools that use it."""

    def __init__(self, session: Any, owned: bool, processes: set[int]) -> None:
        self.session = session
        self.context = session.sparkContext
        self.owned = owned  # forkjoin started it, so forkjoin stops it (and its JVM)
        self.users = 0
        self.processes = processes  # what a local start added: the JVM (and its children)
        # What the pools on this connection share and close with it (the host lanes).
        self.shared: dict[str, Any] = {}
        self.on_close: list[Any] = []

    @property
    def alive(self) -> bool:
        return getattr(self.context, "_jsc", None) is not None

    def pids(self) -> list[int]:
        return with_descendants(self.processes) if self.alive else []


_lock = threading.Lock()
_connections: dict[Any, SparkConnection] = {}


def _build(master: str, settings: dict[str, Any]) -> Any:
    from pyspark import SparkContext
    from pyspark.sql import SparkSession

    require_java()
    builder = SparkSession.builder.master(master).appName("forkjoin")
    for key, value in settings.items():
        builder = builder.config(key, str(value))
    if SparkContext._active_spark_context is not None:
        raise RuntimeError(
            "a SparkContext is already running in this process: pass it (or its SparkSession) "
            "as address= instead of asking forkjoin to start another"
        )
    return builder.getOrCreate()


def _start(master: str, settings: dict[str, Any]) -> SparkConnection:
    before = {child.pid for child in psutil.Process().children()}
    session = _build(master, settings)
    session.sparkContext.setLogLevel("ERROR")
    return SparkConnection(session, True, started_processes(before))


def _local_settings(workers: int, options: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    settings: dict[str, Any] = dict(LOCAL_SETTINGS)
    path = caller_path()
    if path:
        settings["spark.executorEnv.PYTHONPATH"] = path
    settings.update(options)
    return f"local[{workers or usable_cpu_count()}]", settings


def acquire(
    workers: int = 0, address: Any = None, options: dict[str, Any] | None = None
) -> tuple[Any, SparkConnection]:
    """The connection for ``address``; a session is started (or joined) if nobody has."""
    options = dict(options or {})
    from pyspark.sql import SparkSession

    if address is None:
        active = SparkSession.getActiveSession()
        if active is not None and not _ours(active):
            address = active  # the user's own session
    if address is not None and not isinstance(address, str):
        if hasattr(address, "sparkSession") and not hasattr(address, "sparkContext"):
            address = address.sparkSession
        if not hasattr(address, "sparkContext"):  # a SparkContext: wrap it in a session
            address = SparkSession(address)
    key = address if address is None or isinstance(address, str) else id(address)
    with _lock:
        connection = _connections.get(key)
        if connection is None or not connection.alive:
            if address is None:
                connection = _start(*_local_settings(workers, options))
            elif isinstance(address, str):
                settings = {"spark.task.maxFailures": "1"}
                if address.startswith("local") and caller_path():  # executors on this machine
                    settings["spark.executorEnv.PYTHONPATH"] = caller_path()
                connection = _start(address, {**settings, **options})
            else:
                connection = SparkConnection(address, False, set())
            _connections[key] = connection
        connection.users += 1
        return key, connection


def _ours(session: Any) -> bool:
    return any(c.session is session and c.owned for c in _connections.values())


def release(key: Any) -> None:
    """One pool fewer; the last one stops what forkjoin started."""
    with _lock:
        connection = _connections.get(key)
        if connection is None:
            return
        connection.users -= 1
        if connection.users > 0:
            return
        del _connections[key]
    for close in connection.on_close:
        close()
    if connection.owned:
        stop(connection)


def stop(connection: SparkConnection) -> None:
    """Stop the session and the JVM pyspark launched for it; what is left of the processes
    the start added after a grace period is killed."""
    leftovers = connection.pids()
    try:
        connection.session.stop()
    finally:
        stop_jvm()
        for pid in leftovers:
            try:
                process_left = psutil.Process(pid)
                if process_left.status() != psutil.STATUS_ZOMBIE:
                    process_left.kill()
            except psutil.Error:
                pass


def stop_jvm() -> None:
    """End the JVM pyspark launched in this process (pyspark keeps it until the interpreter
    exits, even after ``SparkSession.stop()``): it reads its stdin, and exits at EOF."""
    from pyspark import SparkContext

    gateway = SparkContext._gateway
    process = getattr(gateway, "proc", None)
    if gateway is not None:
        try:
            gateway.shutdown()
        except Exception:
            pass  # already gone
        SparkContext._gateway = None
        SparkContext._jvm = None
    if process is not None:
        try:
            if process.stdin is not None:
                process.stdin.close()
            process.wait(timeout=15)
        except Exception:
            process.kill()
            process.wait(timeout=15)


def local_processes() -> list[int]:
    """PIDs of every Spark forkjoin started here (JVMs, Python daemons and workers)."""
    with _lock:
        connections = list(_connections.values())
    return [pid for c in connections if c.owned for pid in c.pids()]
