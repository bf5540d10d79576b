"""``launch(..., backend="spark")``: the gang's ranks as one Spark barrier stage.

::

    launch_spark(train_fn, workers=N)
      the Spark forkjoin's pools use (the user's session, or a local one started for this)
      sc.parallelize(range(N), N).barrier().mapPartitions(rank): Spark schedules all N tasks
      together or none; in each task:
        rank = partitionId(); MASTER_ADDR = the address of task 0 (from the barrier context)
        rank 0 picks a free port, allGather() gives it to every rank
        init_process_group(gloo | nccl), train_fn(*args, **kwargs)
      any rank that raises or dies fails the stage, and Spark kills the others: the gang stops;
      restarts as with the process backend (each from the last checkpoint train_fn saved);
      rank 0's value is returned

Spark's task retries are off for the sessions forkjoin builds (``spark.task.maxFailures=1``):
restarts are counted by ``max_restarts`` as on every backend. A rank's exception comes back as
``RankError`` naming the rank and the exception type; a rank whose Python worker died as
``RankCrashedError``.
"""

from __future__ import annotations

import os
import re
import sys
from typing import Any

import cloudpickle

from forkjoin.errors import BackendUnavailableError

from . import context
from .errors import RankCrashedError, RankError, TrainingError

__all__ = ["launch_spark"]

# The marker a failing rank puts in its error, so the driver can name the rank and the type
# through Spark's error text.
_MARKER = "forkjoin-rank-failed"
_MARKED = re.compile(_MARKER + r" rank=(\d+) type=(\w+): (.*)")


def _rank_task(payload: bytes, spec: dict[str, Any]) -> Any:
    def run(_: Any) -> list[Any]:
        import socket

        from pyspark import BarrierTaskContext

        barrier = BarrierTaskContext.get()
        rank = barrier.partitionId()
        master = barrier.getTaskInfos()[0].address.rsplit(":", 1)[0]
        port = ""
        if rank == 0:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                sock.bind(("", 0))
                port = str(sock.getsockname()[1])
        port = [p for p in barrier.allGather(port) if p][0]
        world = spec["world_size"]
        os.environ.update(spec["env"])
        os.environ.update(
            MASTER_ADDR=master, MASTER_PORT=port, RANK=str(rank), WORLD_SIZE=str(world),
            LOCAL_RANK="0", FORKJOIN_TRAIN_CHILD="spark",
        )  # fmt: skip
        sys.path[:0] = [p for p in spec["sys_path"] if p not in sys.path]
        ctx = context.RankContext(
            rank=rank, world_size=world, local_rank=0, device_type=spec["device"],
            restart=spec["restart"],
        )  # fmt: skip
        context.set_context(ctx)
        from .rank_main import init_process_group

        train_fn, args, kwargs = cloudpickle.loads(payload)
        init_process_group(ctx)
        import torch.distributed as dist

        try:
            value = train_fn(*args, **kwargs)
        except Exception as exc:
            raise RuntimeError(f"{_MARKER} rank={rank} type={type(exc).__name__}: {exc}") from exc
        finally:
            if dist.is_initialized():
                dist.destroy_process_group()
        return [(rank, value if rank == 0 else None)]

    return run


def launch_spark(
    train_fn: Any,
    *,
    workers: int,
    device: str,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    max_restarts: int,
    env: dict[str, str],
    address: Any = None,
) -> Any:
    try:
        from forkjoin.backends import spark_session
    except ImportError as exc:
        raise BackendUnavailableError(
            'backend="spark" needs pyspark: pip install "forkjoin[spark]"'
        ) from exc
    key, connection = spark_session.acquire(workers, address, {})
    try:
        payload = cloudpickle.dumps((train_fn, args, kwargs))
        restart = 0
        while True:
            try:
                return _run_once(connection.context, payload, workers, device, restart, env)
            except TrainingError as error:
                error.restarts = restart
                if restart >= max_restarts:
                    raise
                restart += 1
                first = str(error).splitlines()[0]
                print(f"forkjoin.train: {first}; relaunching the gang (restart {restart} of "
                      f"{max_restarts})", file=sys.stderr, flush=True)  # fmt: skip
    finally:
        spark_session.release(key)


def _run_once(
    sc: Any, payload: bytes, workers: int, device: str, restart: int, env: dict[str, str]
) -> Any:
    spec = {
        "world_size": workers, "device": device, "restart": restart, "sys_path": list(sys.path),
        "env": {**env, "FORKJOIN_TRAIN_RESTART": str(restart), "FORKJOIN_TRAIN_DEVICE": device},
    }  # fmt: skip
    stage = sc.parallelize(range(workers), workers).barrier().mapPartitions(
        _rank_task(payload, spec)
    )
    sc.setJobGroup(f"forkjoin-train-{os.getpid()}-{restart}", "forkjoin.train gang", True)
    try:
        results = dict(stage.collect())
    except Exception as exc:
        raise _error(workers, exc) from None
    return results.get(0)


def _error(workers: int, exc: Exception) -> TrainingError:
    text = str(exc)
    marked = _MARKED.search(text)
    if marked:
        rank, type_name, message = int(marked.group(1)), marked.group(2), marked.group(3)
        return RankError(
            f"rank {rank} of {workers} raised {type_name}: {message.strip()}", rank=rank,
            original=None, original_type=type_name, traceback_text=_python_part(text),
        )  # fmt: skip
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    summary = next((line for line in lines if "exited unexpectedly" in line or "Lost" in line),
                   lines[0] if lines else type(exc).__name__)  # fmt: skip
    return RankCrashedError(
        f"a rank of the Spark barrier stage ({workers} ranks) died: {summary[:400]}", rank=-1
    )


def _python_part(text: str) -> str:
    """The Python traceback inside Spark's error text (less the JVM stack)."""
    return "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("at "))
