"""``launch(..., backend="ray")``: the gang's ranks as Ray actors, on one machine or a cluster.

::

    launch_ray(train_fn, workers=N)
      ray.init() if needed (RAY_ADDRESS / a running cluster, else a local one)
      N actors, each asking for 1 GPU (device="cuda") or 1 CPU; Ray places them across nodes
      rank 0's actor picks its node's IP and a free port ──> every actor: env RANK/WORLD_SIZE/
      MASTER_ADDR/MASTER_PORT, init_process_group(nccl | gloo), train_fn(*args, **kwargs)
      ray.wait on the N results: the first failure kills every actor of the gang;
      restarts as with the process backend; rank 0's value is returned

Ray sets each actor's CUDA_VISIBLE_DEVICES to its own GPU, so inside a rank the device is
``cuda:0`` and ``local_rank()`` is 0. Heartbeat timeouts are not supported on this backend
(Ray reports dead actors itself); a rank's exception comes back as ``RankError`` with its
traceback, a dead actor as ``RankCrashedError``.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import cloudpickle

from forkjoin.errors import BackendUnavailableError

from . import context
from .errors import RankCrashedError, RankError, TrainingError

__all__ = ["launch_ray"]

# How long ray.wait blocks per round: it returns as soon as any rank finishes or fails, so this
# only bounds how often a stuck gang is looked at.
WAIT_ROUND_SECONDS = 1.0


class _Rank:
    """One rank: a Ray actor running train_fn in its own process."""

    def address(self) -> tuple[str, int]:
        import socket

        import ray

        ip = ray.util.get_node_ip_address()
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("", 0))
            return ip, int(sock.getsockname()[1])

    def run(self, payload: bytes, spec: dict[str, Any]) -> Any:
        os.environ.update(spec["env"])
        # the driver's import path, so train_fn's module imports here as it did there
        sys.path[:0] = [p for p in spec["sys_path"] if p not in sys.path]
        ctx = context.RankContext(
            rank=spec["rank"], world_size=spec["world_size"], local_rank=0,
            device_type=spec["device"], restart=spec["restart"],
        )
        context.set_context(ctx)
        from .rank_main import init_process_group

        train_fn, args, kwargs = cloudpickle.loads(payload)
        init_process_group(ctx)
        import torch.distributed as dist

        try:
            value = train_fn(*args, **kwargs)
        finally:
            if dist.is_initialized():
                dist.destroy_process_group()
        return value if spec["rank"] == 0 else None


def launch_ray(
    train_fn: Any,
    *,
    workers: int,
    device: str,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    max_restarts: int,
    env: dict[str, str],
) -> Any:
    try:
        import ray
    except ImportError as exc:
        raise BackendUnavailableError(
            'backend="ray" needs Ray: pip install "forkjoin[ray]"'
        ) from exc
    if not ray.is_initialized():
        ray.init()
    payload = cloudpickle.dumps((train_fn, args, kwargs))
    actor_class = ray.remote(_Rank)
    gpus = 1 if device == "cuda" else 0
    restart = 0
    while True:
        try:
            return _run_once(ray, actor_class, payload, workers, device, gpus, restart, env)
        except TrainingError as error:
            error.restarts = restart
            if restart >= max_restarts:
                raise
            restart += 1
            print(f"forkjoin.train: {str(error).splitlines()[0]}; relaunching the gang "
                  f"(restart {restart} of {max_restarts})", file=sys.stderr, flush=True)


def _run_once(
    ray: Any, actor_class: Any, payload: bytes, workers: int, device: str, gpus: int,
    restart: int, env: dict[str, str],
) -> Any:
    actors = [
        actor_class.options(num_cpus=1, num_gpus=gpus, name=None).remote()
        for _ in range(workers)
    ]
    try:
        master, port = ray.get(actors[0].address.remote())
        refs = []
        for rank, actor in enumerate(actors):
            spec = {
                "rank": rank, "world_size": workers, "device": device, "restart": restart,
                "sys_path": list(sys.path),
                "env": {
                    **env, "MASTER_ADDR": master, "MASTER_PORT": str(port), "RANK": str(rank),
                    "WORLD_SIZE": str(workers), "LOCAL_RANK": "0",
                    "FORKJOIN_TRAIN_RESTART": str(restart), "FORKJOIN_TRAIN_DEVICE": device,
                    "FORKJOIN_TRAIN_CHILD": "ray",
                },
            }
            refs.append(actor.run.remote(payload, spec))
        rank_of = {ref: rank for rank, ref in enumerate(refs)}
        pending = list(refs)
        result = None
        while pending:
            done, pending = ray.wait(pending, num_returns=1, timeout=WAIT_ROUND_SECONDS)
            for ref in done:
                try:
                    value = ray.get(ref)
                except Exception as exc:  # the first failure stops the gang
                    error = _error(rank_of[ref], workers, exc)
                    raise error from error.__cause__  # the rank's traceback, not Ray's wrapper
                if rank_of[ref] == 0:
                    result = value
        return result
    finally:
        for actor in actors:
            ray.kill(actor, no_restart=True)


def _error(rank: int, workers: int, exc: Exception) -> TrainingError:
    from ray.exceptions import RayActorError, RayTaskError

    where = f"rank {rank} of {workers}"
    if isinstance(exc, RayTaskError):
        cause = exc.cause if isinstance(exc.cause, BaseException) else None
        type_name = type(cause).__name__ if cause is not None else "Exception"
        message = str(cause) if cause is not None else str(exc)
        return RankError(
            f"{where} raised {type_name}: {message}", rank=rank, original=None,
            original_type=type_name, traceback_text=str(exc),
        )
    if isinstance(exc, RayActorError):
        return RankCrashedError(f"{where} (a Ray actor) died: {exc}", rank=rank)
    return RankError(f"{where} failed: {exc!r}", rank=rank, original_type=type(exc).__name__)
