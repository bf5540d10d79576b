"""forkjoin.train: data-parallel (DDP) and sharded (FSDP2) PyTorch training in one call.

::

    import forkjoin.train as fjt

    def train(steps):
        model, opt, loader = fjt.prepare(model, opt, loader, precision="bf16")
        ckpt = fjt.load_checkpoint("ckpt", model=model, optimizer=opt, loader=loader)
        for step in range(ckpt.step if ckpt else 0, steps):
            ...                                        # the plain PyTorch loop
            fjt.log(step=step, loss=loss, samples=len(x))
            fjt.save_checkpoint("ckpt", model=model, optimizer=opt, loader=loader, step=step)

    fjt.launch(train, workers=2, device="cpu", args=(100,), max_restarts=1)

Names load on first use (PEP 562): ``launch`` and the rank helpers do not import torch, so the
ranks the launcher spawns can cap their thread pools before torch loads. (The modules are
``gang.py`` and ``wrapping.py``, not ``launch.py`` and ``prepare.py``: importing a submodule
binds its name on the package, which would hide the functions ``launch`` and ``prepare``.)
"""

from __future__ import annotations

import importlib as _importlib
import typing as _typing

_EXPORTS = {
    "launch": "forkjoin.train.gang",
    "prepare": "forkjoin.train.wrapping",
    "backward": "forkjoin.train.wrapping",
    "unwrap": "forkjoin.train.wrapping",
    "PreparedOptimizer": "forkjoin.train.wrapping",
    "PreparedLoader": "forkjoin.train.sampler",
    "ShardedSampler": "forkjoin.train.sampler",
    "rank": "forkjoin.train.context",
    "world_size": "forkjoin.train.context",
    "local_rank": "forkjoin.train.context",
    "is_main": "forkjoin.train.context",
    "device": "forkjoin.train.context",
    "restart_count": "forkjoin.train.context",
    "heartbeat": "forkjoin.train.context",
    "barrier": "forkjoin.train.context",
    "all_reduce_mean": "forkjoin.train.context",
    "main_first": "forkjoin.train.context",
    "log": "forkjoin.train.metrics",
    "transformer_flops_per_token": "forkjoin.train.metrics",
    "save_checkpoint": "forkjoin.train.checkpoint",
    "load_checkpoint": "forkjoin.train.checkpoint",
    "latest_checkpoint": "forkjoin.train.checkpoint",
    "Checkpoint": "forkjoin.train.checkpoint",
    "full_state_dict": "forkjoin.train.state",
    "TrainingError": "forkjoin.train.errors",
    "RankError": "forkjoin.train.errors",
    "RankCrashedError": "forkjoin.train.errors",
    "RankTimeoutError": "forkjoin.train.errors",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> _typing.Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'forkjoin.train' has no attribute {name!r}")
    value = getattr(_importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
