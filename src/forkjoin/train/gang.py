"""The gang: N rank processes that start together, run ``train_fn``, and stop together.

::

    launch(train_fn, workers=N)
      │  free loopback port, a temp dir for stack dumps, a shared heartbeat array
      ▼
    start rank 0 .. N-1 ──> fresh interpreters (rank_main.py): env RANK/WORLD_SIZE/LOCAL_RANK/
      │                      MASTER_*, thread caps, faulthandler on SIGUSR1, a lifeline pipe,
      │                      init_process_group(gloo | nccl), train_fn(*args) ──>
      │                      ("ok", value) | ("error", traceback) on its result pipe
      ▼
    watch: connection.wait(result pipes + pidfd sentinels, tick) and the heartbeats
      │  first failure (raise, death, stall) ──> settle briefly, pick the root cause,
      │  SIGTERM the gang (and its children), SIGKILL after STOP_GRACE_SECONDS
      ▼
    restarts left? relaunch the whole gang (train_fn resumes from its last checkpoint)
    else raise RankError / RankCrashedError / RankTimeoutError naming the rank

Why not ``fj.Pool``: a gang is not a task pool. Its ranks must all start, all be alive for the
run (a collective blocks until every rank arrives), and all stop when one fails; a pool replaces
a dead worker and retries its task, which for a rank stuck in an all-reduce would only deadlock.
So the gang owns its processes directly, started like the process backend's workers (fresh
interpreters through ``subprocess``, no multiprocessing resource tracker, nothing forked from a
process that may hold CUDA or OpenMP state) and waited on through sentinels, never by polling
alone. ranks.py runs one attempt (start, watch, stop); failures.py picks the root cause and
builds the error.

Under torchrun (``TORCHELASTIC_RUN_ID`` or ``RANK``/``WORLD_SIZE``/``MASTER_ADDR`` already set)
``launch`` does not spawn: it joins the process group from the environment and runs
``train_fn`` in place; torchrun owns restarts there.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

import cloudpickle

from . import context
from .errors import TrainingError
from .rank_main import CHILD_MARKER, init_process_group
from .ranks import Gang

__all__ = ["launch"]


def _under_external_launcher() -> bool:
    env = os.environ
    if env.get(CHILD_MARKER):
        return False
    if env.get("TORCHELASTIC_RUN_ID"):
        return True
    return all(env.get(k) for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"))


def _resolve_device(device: str) -> str:
    if device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', not {device!r}")
    if device == "auto":
        from forkjoin.machine import gpus

        return "cuda" if gpus() else "cpu"
    return device


def _default_workers(device: str) -> int:
    from forkjoin.machine import gpus, usable_cpu_count

    if device == "cuda":
        return max(1, len(gpus()))
    return max(1, min(usable_cpu_count(), 4))


def launch(
    train_fn: Callable[..., Any],
    *,
    workers: int | None = None,
    device: str = "auto",
    args: Sequence[Any] = (),
    kwargs: dict[str, Any] | None = None,
    max_restarts: int = 0,
    timeout: float | None = None,
    backend: str = "process",
    threads_per_rank: int | None = None,
    env: dict[str, str] | None = None,
    profile: bool | str = False,
) -> Any:
    """Run ``train_fn(*args, **kwargs)`` in a gang of ``workers`` ranks; return rank 0's value.

    ``device``: ``"cpu"`` (gloo, N processes), ``"cuda"`` (nccl, one rank per GPU) or ``"auto"``.
    ``max_restarts``: relaunch the whole gang this many times after a failure; ``train_fn``
    resumes by calling ``load_checkpoint`` (``restart_count()`` says which run this is).
    ``timeout``: seconds a rank may go without a heartbeat (prepared loaders, models and
    optimizers beat on every batch; ``heartbeat()`` does it by hand) before the gang is stopped
    with ``RankTimeoutError`` showing that rank's stack. It applies from a rank's first
    heartbeat; start-up (torch import, process group, building the model) gets
    ``max(timeout, START_TIMEOUT_SECONDS)``. ``backend="ray"`` runs the ranks as Ray actors,
    ``backend="spark"`` as one Spark barrier stage (``spark_launch.py``).
    ``threads_per_rank`` caps torch/BLAS threads per rank (default: usable CPUs / workers).
    ``env``: extra environment variables for the ranks.
    ``profile``: sample every rank's Python stacks (``forkjoin.observe``); True prints the top
    functions across ranks, a path ("train.speedscope.json") writes speedscope JSON.
    Raises ``RankError`` (a rank raised), ``RankCrashedError`` (a rank died) or
    ``RankTimeoutError`` (a rank stalled), each naming the rank.
    """
    kwargs = dict(kwargs or {})
    if max_restarts < 0:
        raise ValueError("max_restarts must be >= 0")
    if timeout is not None and timeout <= 0:
        raise ValueError("timeout must be a positive number of seconds")
    if _under_external_launcher():
        return _run_in_place(train_fn, args, kwargs)
    device = _resolve_device(device)
    if workers is None:
        workers = _default_workers(device)
    if workers < 1:
        raise ValueError("workers must be >= 1")
    if device == "cuda" and backend == "process":
        from forkjoin.errors import ResourceError
        from forkjoin.machine import gpus

        found = len(gpus())
        if workers > found:
            raise ResourceError(
                f"device='cuda' runs one rank per GPU: {workers} ranks asked, {found} GPU(s) "
                f"visible; lower workers= or use device='cpu'"
            )
    if backend in ("ray", "spark"):
        if backend == "ray":
            from .ray_launch import launch_ray as launch_elsewhere
        else:
            from .spark_launch import launch_spark as launch_elsewhere
        return launch_elsewhere(
            train_fn,
            workers=workers,
            device=device,
            args=tuple(args),
            kwargs=kwargs,
            max_restarts=max_restarts,
            env=env or {},
        )
    if backend != "process":
        raise ValueError(f"backend must be 'process', 'ray' or 'spark', not {backend!r}")
    if threads_per_rank is None:
        from forkjoin.machine import usable_cpu_count

        threads_per_rank = max(1, usable_cpu_count() // workers)
    session = None
    if profile:  # observe: each rank samples its own stacks; merged here at the end
        from forkjoin.observe.runs import start_profile

        train_fn, session = start_profile(train_fn)
    payload = cloudpickle.dumps((train_fn, tuple(args), kwargs))
    unfollow = None
    if "forkjoin.observe.dashboard" in sys.modules:  # observe: a live dashboard is up
        from forkjoin.observe.runs import follow_training

        env, unfollow = follow_training(env, workers)
    try:
        return _run_gang(payload, workers, device, timeout, threads_per_rank, env, max_restarts)
    finally:
        if unfollow is not None:
            unfollow()
        if session is not None:
            from forkjoin.observe.runs import deliver_profile

            deliver_profile(session.stop(), profile, None)


def _run_gang(
    payload: bytes,
    workers: int,
    device: str,
    timeout: float | None,
    threads_per_rank: int,
    env: dict[str, str] | None,
    max_restarts: int,
) -> Any:
    """Launch the gang, relaunching it after a failure up to ``max_restarts`` times."""
    restart = 0
    while True:
        gang = Gang(
            payload,
            workers=workers,
            device=device,
            restart=restart,
            timeout=timeout,
            threads=threads_per_rank,
            env=env or {},
        )
        try:
            return gang.run()
        except TrainingError as error:
            error.restarts = restart
            if restart >= max_restarts:
                if max_restarts:
                    error.args = (f"{error.args[0]} (after {restart} restart(s))", *error.args[1:])
                raise
            restart += 1
            print(
                f"forkjoin.train: {error.args[0].splitlines()[0]}; relaunching the gang "
                f"(restart {restart} of {max_restarts})",
                file=sys.stderr,
                flush=True,
            )


def _run_in_place(train_fn: Callable[..., Any], args: Sequence[Any], kw: dict[str, Any]) -> Any:
    """Started by torchrun (or a similar launcher): join its process group and run here."""
    import torch.distributed as dist

    ctx = context.current()
    created = False
    if not dist.is_initialized():
        init_process_group(ctx)
        created = True
    try:
        return train_fn(*args, **kw)
    finally:
        if created:
            dist.destroy_process_group()
