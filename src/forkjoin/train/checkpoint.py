"""Checkpoints that are either complete or invisible.

::

    save_checkpoint(dir, model=..., optimizer=..., step=N)      (every rank calls it)
      rank 0: clear dir/.staging-step-N ──> barrier
      DDP / one rank: rank 0 writes state.pt          FSDP: every rank writes its shards (DCP)
      barrier ──> rank 0: fsync files ──> rename to dir/step-N ──> meta.json last (tmp, fsync,
      rename) ──> fsync dir ──> prune old ones (keep=) ──> barrier

    load_checkpoint(dir, model=..., ...)  newest dir/step-N that has meta.json; the others
      (a crash mid-save) are ignored. state.pt loads with weights_only=True.

state.pt holds the model (DDP: the unwrapped module's state), optimizer, scheduler, GradScaler,
the loader's epoch and position, every rank's RNG states (torch, CUDA, Python, NumPy) and
``step`` plus the caller's ``**extra`` (tensors, numbers, strings, lists, dicts: what
``weights_only`` accepts). With FSDP the model and optimizer go through
``torch.distributed.checkpoint`` (each rank writes its own shards) and state.pt holds the rest.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from . import context
from .sampler import PreparedLoader
from .wrapping import PreparedOptimizer, fsdp_api, unwrap

__all__ = ["save_checkpoint", "load_checkpoint", "latest_checkpoint", "Checkpoint"]

META = "meta.json"
STATE = "state.pt"
SHARDS = "dcp"
PREFIX = "step-"


@dataclass
class Checkpoint:
    """A loaded checkpoint: where it was, its step, and the ``**extra`` saved with it."""

    path: Path
    step: int
    extra: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def _barrier() -> None:
    if _distributed():
        context.heartbeat()
        dist.barrier()
        context.heartbeat()


def _is_fsdp(model: Any) -> bool:
    if model is None:
        return False
    _, FSDPModule = fsdp_api()

    return isinstance(unwrap(model), FSDPModule)


def _inner_optimizer(optimizer: Any) -> Any:
    return optimizer.optimizer if isinstance(optimizer, PreparedOptimizer) else optimizer


def _rng_state() -> dict[str, Any]:
    import numpy as np

    kind, keys, pos, has_gauss, cached = np.random.get_state()  # type: ignore[misc]
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": [kind, torch.from_numpy(np.asarray(keys, dtype=np.int64)), pos, has_gauss,
                  cached],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    import numpy as np

    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def _fsync_tree(path: Path) -> None:
    for root, _dirs, files in os.walk(path):
        for name in files:
            fd = os.open(os.path.join(root, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(Path(root))


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_json_atomically(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as f:
        json.dump(data, f, indent=2)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def save_checkpoint(
    path: str | os.PathLike[str],
    *,
    model: Any = None,
    optimizer: Any = None,
    scheduler: Any = None,
    loader: Any = None,
    step: int = 0,
    keep: int | None = None,
    **extra: Any,
) -> Path:
    """Write ``path/step-<step>`` atomically; every rank must call it. Returns its path.
    ``keep``: how many complete checkpoints to keep (oldest removed; ``None`` keeps all)."""
    root = Path(path)
    rank = context.rank()
    final = root / f"{PREFIX}{step:08d}"
    staging = root / f".staging-{PREFIX}{step:08d}"
    if rank == 0:
        root.mkdir(parents=True, exist_ok=True)
        for stale in root.glob(f".staging-{PREFIX}*"):  # left by a save that crashed
            shutil.rmtree(stale, ignore_errors=True)
        staging.mkdir()
    context.heartbeat()
    rng = [_rng_state()]
    if _distributed() and dist.get_world_size() > 1:
        gathered: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, rng[0])
        rng = gathered
    _barrier()  # staging exists before anyone writes into it
    fsdp = _is_fsdp(model)
    inner_opt = _inner_optimizer(optimizer)
    state: dict[str, Any] = {"step": step, "rng": rng, "extra": extra}
    if fsdp:
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_state_dict

        model_sd, optim_sd = get_state_dict(
            unwrap(model), [inner_opt] if inner_opt is not None else []
        )
        sharded: dict[str, Any] = {"model": model_sd}
        if inner_opt is not None:
            sharded["optimizer"] = optim_sd
        dcp.save(sharded, checkpoint_id=str(staging / SHARDS))
    else:
        if model is not None:
            state["model"] = unwrap(model).state_dict()
        if inner_opt is not None:
            state["optimizer"] = inner_opt.state_dict()
    if scheduler is not None:
        state["scheduler"] = scheduler.state_dict()
    if isinstance(optimizer, PreparedOptimizer) and optimizer.scaler is not None:
        state["scaler"] = optimizer.scaler.state_dict()
    if isinstance(loader, PreparedLoader) or getattr(loader, "forkjoin_shard", False):
        state["loader"] = loader.state_dict()  # a shard's gathers every rank's position
    if rank == 0:
        torch.save(state, staging / STATE)
    _barrier()  # every shard written
    if rank == 0:
        _fsync_tree(staging)
        if final.exists():
            shutil.rmtree(final)
        os.replace(staging, final)
        _fsync_dir(root)
        meta = {
            "step": step,
            "format": "dcp" if fsdp else "torch",
            "world_size": context.world_size(),
            "time": time.time(),
            "extra_keys": sorted(extra),
        }
        _write_json_atomically(final / META, meta)  # the checkpoint exists from here on
        if keep is not None:
            for old in _complete(root)[:-keep] if keep > 0 else []:
                shutil.rmtree(old, ignore_errors=True)
    _barrier()
    return final


def _complete(root: Path) -> list[Path]:
    """Complete checkpoints under ``root``, oldest first."""
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        if child.name.startswith(PREFIX) and (child / META).is_file():
            try:
                found.append((int(child.name[len(PREFIX) :]), child))
            except ValueError:
                continue
    return [p for _, p in sorted(found)]


def latest_checkpoint(path: str | os.PathLike[str]) -> Path | None:
    """The newest complete checkpoint at ``path`` (itself, or its newest ``step-N``)."""
    root = Path(path)
    if (root / META).is_file():
        return root
    complete = _complete(root)
    return complete[-1] if complete else None


def load_checkpoint(
    path: str | os.PathLike[str],
    *,
    model: Any = None,
    optimizer: Any = None,
    scheduler: Any = None,
    loader: Any = None,
    restore_rng: bool = True,
    strict: bool = True,
) -> Checkpoint | None:
    """Restore the newest complete checkpoint at ``path`` into the objects given (every rank
    must call it); ``None`` when there is none yet, so a fresh run and a resumed one share the
    same code: ``ckpt = load_checkpoint(dir, ...); step = ckpt.step if ckpt else 0``."""
    chosen = [str(latest_checkpoint(path) or "")] if context.rank() == 0 else [""]
    if _distributed() and dist.get_world_size() > 1:
        dist.broadcast_object_list(chosen, src=0)  # every rank loads the same one
    if not chosen[0]:
        return None
    where = Path(chosen[0])
    context.heartbeat()
    meta = json.loads((where / META).read_text())
    state = torch.load(where / STATE, map_location="cpu", weights_only=True)
    inner_opt = _inner_optimizer(optimizer)
    if meta.get("format") == "dcp":
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

        if model is None:
            raise ValueError("an FSDP checkpoint needs model= to load into")
        opts = [inner_opt] if inner_opt is not None else []
        model_sd, optim_sd = get_state_dict(unwrap(model), opts)
        sharded: dict[str, Any] = {"model": model_sd}
        if inner_opt is not None:
            sharded["optimizer"] = optim_sd
        dcp.load(sharded, checkpoint_id=str(where / SHARDS))
        set_state_dict(
            unwrap(model), opts, model_state_dict=sharded["model"],
            optim_state_dict=sharded.get("optimizer", {}),
        )
    else:
        if model is not None:
            unwrap(model).load_state_dict(state["model"], strict=strict)
        if inner_opt is not None and "optimizer" in state:
            inner_opt.load_state_dict(state["optimizer"])
    if scheduler is not None and "scheduler" in state:
        scheduler.load_state_dict(state["scheduler"])
    if isinstance(optimizer, PreparedOptimizer):
        if optimizer.scaler is not None and "scaler" in state:
            optimizer.scaler.load_state_dict(state["scaler"])
        optimizer.accumulation.calls = 0  # checkpoints are taken between optimizer steps
    if (isinstance(loader, PreparedLoader) or getattr(loader, "forkjoin_shard", False)) and (
        "loader" in state
    ):
        loader.load_state_dict(state["loader"])
    rng = state.get("rng") or []
    if restore_rng and rng:
        rank = context.rank()
        _set_rng_state(rng[rank] if rank < len(rng) else rng[0])
    context.heartbeat()
    return Checkpoint(path=where, step=int(state["step"]), extra=state.get("extra", {}), meta=meta)
