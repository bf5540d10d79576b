"""Task functions for the Ray, Dask and Spark tests (cluster workers import them by sys.path)."""

from __future__ import annotations

import os
import signal
import sys
import time


def node_of(item: int, seconds: float = 0.05) -> tuple[int, str, int]:
    """(item, the node that ran it, its pid): sleeps so the work spreads over the nodes."""
    time.sleep(seconds)
    return item, current_node(), os.getpid()


def current_node() -> str:
    if "pyspark" in sys.modules:
        from pyspark import TaskContext

        if TaskContext.get() is not None:  # a Spark host: Python worker <- daemon <- executor
            import psutil

            return f"executor-{psutil.Process(os.getppid()).ppid()}"
    try:
        import distributed

        return str(distributed.get_worker().name)
    except (ImportError, ValueError):
        pass
    import ray

    return str(ray.get_runtime_context().get_node_id())


def kill_worker_once(args: tuple[int, str]) -> int:
    """SIGKILL this worker the first time item ``i`` runs (a marker file remembers)."""
    item, folder = args
    marker = os.path.join(folder, f"killed-{item}")
    if item % 5 == 0 and not os.path.exists(marker):
        with open(marker, "w") as fh:
            fh.write(str(os.getpid()))
        os.kill(os.getpid(), signal.SIGKILL)
    return item * item


def kill_worker_always(_item: int) -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def shared_sum(handle) -> float:  # type: ignore[no-untyped-def]
    return float(handle.get().sum())


def shared_identity(handle) -> int:  # type: ignore[no-untyped-def]
    return id(handle.get())


def worker_context_state(_item: int) -> tuple[str, int]:
    import forkjoin as fj

    context = fj.worker_context()
    return context.backend, context.state.get("initialized", 0)


def mark_initialized() -> None:
    import forkjoin as fj

    fj.worker_context().state["initialized"] = 1
