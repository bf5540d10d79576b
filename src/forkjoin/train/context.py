"""Where this process stands in the gang: rank, world size, device, and its heartbeat.

The launcher's rank bootstrap sets the context before ``train_fn`` runs; under torchrun (or any
launcher that exports ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``) it is read from the environment;
in a plain process it is rank 0 of 1. Nothing here imports torch at module level, so the rank
bootstrap can cap thread pools before torch loads.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

__all__ = [
    "RankContext",
    "current",
    "rank",
    "world_size",
    "local_rank",
    "is_main",
    "device",
    "restart_count",
    "heartbeat",
    "all_reduce_mean",
    "barrier",
    "main_first",
]


@dataclass
class RankContext:
    rank: int
    world_size: int
    local_rank: int
    device_type: str  # "cpu" or "cuda"
    restart: int = 0  # how many times the gang was relaunched before this run
    heartbeats: Any = None  # a shared array of monotonic times, one slot per rank, or None


_context: RankContext | None = None


def set_context(ctx: RankContext | None) -> None:
    global _context
    _context = ctx


def current() -> RankContext:
    """This process's place in the gang (from the launcher, the environment, or 0 of 1)."""
    if _context is not None:
        return _context
    env = os.environ
    device_type = env.get("FORKJOIN_TRAIN_DEVICE", "")
    if not device_type:
        device_type = "cuda" if env.get("LOCAL_RANK") and _cuda_available() else "cpu"
    return RankContext(
        rank=int(env.get("RANK", "0")),
        world_size=int(env.get("WORLD_SIZE", "1")),
        local_rank=int(env.get("LOCAL_RANK", "0")),
        device_type=device_type,
        restart=int(env.get("FORKJOIN_TRAIN_RESTART", env.get("TORCHELASTIC_RESTART_COUNT", "0"))),
    )


def _cuda_available() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def rank() -> int:
    """This process's global rank (0 outside a gang)."""
    return current().rank


def world_size() -> int:
    """How many ranks the gang has (1 outside a gang)."""
    return current().world_size


def local_rank() -> int:
    """This process's rank on its machine: the index of its GPU."""
    return current().local_rank


def is_main() -> bool:
    """True on rank 0: the rank that logs and writes checkpoints."""
    return current().rank == 0


def restart_count() -> int:
    """How many times the launcher relaunched the gang before this run (0 on the first)."""
    return current().restart


def device() -> Any:
    """This rank's ``torch.device``: ``cuda:LOCAL_RANK`` on GPUs, else ``cpu``."""
    import torch

    ctx = current()
    if ctx.device_type == "cuda":
        return torch.device("cuda", ctx.local_rank)
    return torch.device("cpu")


def heartbeat() -> None:
    """Tell the launcher this rank is making progress. Called for you by prepared loaders,
    models, optimizers, ``log`` and ``save_checkpoint``; call it in long custom phases when
    ``launch(timeout=...)`` is set."""
    ctx = _context
    if ctx is not None and ctx.heartbeats is not None:
        ctx.heartbeats[ctx.rank] = time.monotonic()


def _distributed() -> bool:
    import torch.distributed as dist

    return bool(dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1)


def barrier() -> None:
    """Wait for every rank (no-op outside a gang)."""
    if _distributed():
        import torch.distributed as dist

        heartbeat()
        dist.barrier()
        heartbeat()


def all_reduce_mean(value: Any) -> Any:
    """The mean of ``value`` over all ranks: a float for a number, a tensor for a tensor.
    Every rank must call it (it is a collective)."""
    import torch

    is_tensor = isinstance(value, torch.Tensor)
    if not _distributed():
        return value.detach().clone() if is_tensor else float(value)
    import torch.distributed as dist

    tensor = value.detach().clone() if is_tensor else torch.tensor(float(value))
    if not is_tensor or tensor.device.type == "cpu":
        tensor = tensor.to(device() if current().device_type == "cuda" else "cpu")
    original_dtype = tensor.dtype
    tensor = tensor.to(torch.float64 if tensor.device.type == "cpu" else torch.float32)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    tensor /= dist.get_world_size()
    if is_tensor:
        out = tensor.to(original_dtype if original_dtype.is_floating_point else tensor.dtype)
        return out.to(value.device)
    return float(tensor.item())


@contextlib.contextmanager
def main_first() -> Iterator[None]:
    """Run the block on rank 0 first, then on the other ranks: downloads and caches are built
    once and read by everyone else."""
    if not is_main():
        barrier()
    try:
        yield
    finally:
        if is_main():
            barrier()
