"""``prepare``: turn a plain model, optimizer and loader into their data-parallel versions,
so the training loop itself stays as it was (nanoGPT style: forward, ``loss.backward()``,
``optimizer.step()``, ``optimizer.zero_grad()``).

::

    model ──> .to(rank's device) ──> DDP | fully_shard (FSDP2) ──> forward patched with
              autocast (bf16/fp16), heartbeat and "sync grads on the last micro-step only"
              ──> torch.compile (compile=True)
    optimizer ──> PreparedOptimizer: steps every grad_accum-th call, grads averaged over the
              micro-steps, fp16 loss scaling
    loader ──> same settings, ShardedSampler (this rank's share, checkpointable position)

Gradient accumulation keeps the loop unchanged: call ``optimizer.step()`` after every
micro-batch as usual; the prepared optimizer only really steps on every ``grad_accum``-th call
(``optimizer.synced`` says whether the last call did), dividing the summed gradients by
``grad_accum`` first, and the model skips the gradient all-reduce on the other micro-steps
(DDP's ``no_sync``, FSDP's ``set_requires_gradient_sync(False)``).
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import nn

from . import context
from .sampler import PreparedLoader, shard_loader

__all__ = ["prepare", "unwrap", "PreparedOptimizer", "backward"]

STRATEGIES = ("auto", "ddp", "fsdp")
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
# strategy="auto" shards (FSDP) when params + grads + Adam moments (16 bytes per fp32
# parameter) would use more than this share of one GPU's memory; otherwise DDP, which is faster.
AUTO_FSDP_MEMORY_SHARE = 0.5


class _Accumulation:
    """Shared by a prepared model and its optimizer: which micro-step is running."""

    def __init__(self, grad_accum: int) -> None:
        self.grad_accum = grad_accum
        self.calls = 0  # optimizer.step() calls so far

    @property
    def sync_now(self) -> bool:
        return self.calls % self.grad_accum == self.grad_accum - 1


class PreparedOptimizer(torch.optim.Optimizer):
    """The user's optimizer, stepping once per ``grad_accum`` calls (and through a GradScaler
    for fp16). An ``Optimizer`` subclass, so LR schedulers accept it; everything else is the
    wrapped optimizer's (``param_groups``, ``state``, ``state_dict()``)."""

    def __init__(
        self, optimizer: torch.optim.Optimizer, accumulation: _Accumulation, scaler: Any = None
    ) -> None:
        # deliberately no super().__init__: this object only forwards to ``optimizer``
        self.optimizer = optimizer
        self.accumulation = accumulation
        self.scaler = scaler
        self.synced = False
        self._backward_called = False

    # the wrapped optimizer's attributes, so schedulers and user code see the real ones
    @property  # type: ignore[override]
    def param_groups(self) -> list[dict[str, Any]]:
        return self.optimizer.param_groups

    @param_groups.setter
    def param_groups(self, value: list[dict[str, Any]]) -> None:
        self.optimizer.param_groups = value

    @property  # type: ignore[override]
    def state(self) -> Any:
        return self.optimizer.state

    @state.setter
    def state(self, value: Any) -> None:
        self.optimizer.state = value

    @property  # type: ignore[override]
    def defaults(self) -> dict[str, Any]:
        return self.optimizer.defaults

    @defaults.setter
    def defaults(self, value: dict[str, Any]) -> None:
        self.optimizer.defaults = value

    def state_dict(self) -> dict[str, Any]:
        return self.optimizer.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state_dict)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        self.optimizer.add_param_group(param_group)

    def step(self, closure: Any = None) -> Any:  # type: ignore[override]
        context.heartbeat()
        acc = self.accumulation
        acc.calls += 1
        self.synced = acc.calls % acc.grad_accum == 0
        if not self.synced:
            return None
        if self.scaler is not None:
            if not self._backward_called:
                raise RuntimeError(
                    "precision='fp16' scales the loss: call fj.train.backward(loss) instead of "
                    "loss.backward()"
                )
            self._backward_called = False
            self.scaler.unscale_(self.optimizer)
        if acc.grad_accum > 1:
            with torch.no_grad():
                for group in self.optimizer.param_groups:
                    for p in group["params"]:
                        if p.grad is not None:
                            p.grad.div_(acc.grad_accum)
        if self.scaler is not None:
            out = self.scaler.step(self.optimizer)
            self.scaler.update()
            return out
        return self.optimizer.step(closure)

    def zero_grad(self, set_to_none: bool = True) -> None:
        # only between accumulation windows: a zero_grad inside one would lose micro-steps
        if self.accumulation.calls % self.accumulation.grad_accum == 0:
            self.optimizer.zero_grad(set_to_none=set_to_none)

    def __repr__(self) -> str:
        return f"PreparedOptimizer({self.optimizer!r}, grad_accum={self.accumulation.grad_accum})"


_last_optimizer: PreparedOptimizer | None = None


def backward(loss: torch.Tensor) -> None:
    """``loss.backward()``, scaled when ``precision="fp16"`` (required then; optional else)."""
    opt = _last_optimizer
    if opt is not None and opt.scaler is not None:
        opt._backward_called = True
        opt.scaler.scale(loss).backward()
    else:
        loss.backward()


def unwrap(model: nn.Module) -> nn.Module:
    """The user's own module inside a compiled / DDP wrapper (FSDP2 shards in place)."""
    while True:
        inner = getattr(model, "_orig_mod", None)  # torch.compile
        if inner is None and isinstance(model, nn.parallel.DistributedDataParallel):
            inner = model.module
        if inner is None:
            return model
        model = inner


def _choose_strategy(strategy: str, model: nn.Module, device: torch.device) -> str:
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, not {strategy!r}")
    if strategy != "auto":
        return strategy
    if device.type != "cuda":
        return "ddp"
    params = sum(p.numel() for p in model.parameters())
    memory = torch.cuda.get_device_properties(device).total_memory
    return "fsdp" if params * 16 > AUTO_FSDP_MEMORY_SHARE * memory else "ddp"


def fsdp_api() -> tuple[Any, type]:
    """``(fully_shard, FSDPModule)``: public in torch >= 2.6, under ``_composable`` before."""
    try:
        from torch.distributed.fsdp import FSDPModule, fully_shard
    except ImportError:  # torch 2.4-2.5
        from torch.distributed._composable.fsdp import (  # type: ignore[no-redef]
            FSDPModule,
            fully_shard,
        )
    return fully_shard, FSDPModule


def _shard(model: nn.Module) -> None:
    """FSDP2: shard each block (the elements of ModuleLists/Sequentials, or the root's other
    children with parameters), then the root."""
    fully_shard, _ = fsdp_api()

    for child in model.children():
        if isinstance(child, (nn.ModuleList, nn.Sequential)):
            for block in child:
                if any(True for _ in block.parameters()):
                    fully_shard(block)
        elif any(True for _ in child.parameters()):
            fully_shard(child)
    fully_shard(model)


def _remap_optimizer(optimizer: torch.optim.Optimizer, old_names: dict[int, str], model: nn.Module):
    """fully_shard replaces parameters with sharded ones: point the optimizer's groups at them
    in place, so schedulers already attached stay valid."""
    if optimizer.state:
        raise ValueError("prepare(strategy='fsdp') needs an optimizer that has not stepped yet")
    new = dict(model.named_parameters())
    for group in optimizer.param_groups:
        group["params"] = [new[old_names[id(p)]] for p in group["params"]]


def prepare(
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    loader: Any = None,
    *,
    strategy: str = "auto",
    precision: str = "fp32",
    compile: bool = False,
    grad_accum: int = 1,
    seed: int = 0,
    find_unused_parameters: bool = False,
) -> tuple[Any, Any, Any]:
    """Make ``model``, ``optimizer`` and ``loader`` data-parallel; returns the three (``None``
    for what was not given), to be used by the loop exactly as before.

    ``strategy``: ``"ddp"`` (replicas, all-reduce), ``"fsdp"`` (``fully_shard``: parameters,
    grads and optimizer state sharded) or ``"auto"`` (FSDP only when the model would not fit).
    ``precision``: ``"bf16"``/``"fp16"`` run forward under autocast (fp16 also scales the loss:
    use ``fj.train.backward(loss)``). ``grad_accum``: micro-steps per optimizer step.
    ``seed``: the shuffle seed of the sharded loader (the same on every rank).
    """
    global _last_optimizer
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {list(PRECISIONS)}, not {precision!r}")
    if grad_accum < 1:
        raise ValueError("grad_accum must be >= 1")
    dev = context.device()
    strategy = _choose_strategy(strategy, model, dev)
    ctx = context.current()
    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    accumulation = _Accumulation(grad_accum)

    old_names = {id(p): name for name, p in model.named_parameters()}
    model.to(dev)
    wrapped: nn.Module = model
    if strategy == "fsdp":
        if not distributed:
            raise RuntimeError("strategy='fsdp' needs a process group: run under fj.train.launch")
        _shard(model)
        if optimizer is not None:
            _remap_optimizer(optimizer, old_names, model)
    elif distributed:
        device_ids = [dev.index] if dev.type == "cuda" else None
        wrapped = nn.parallel.DistributedDataParallel(
            model, device_ids=device_ids, find_unused_parameters=find_unused_parameters
        )
    model_out: nn.Module = wrapped
    if compile:
        # compile the DDP/FSDP module as PyTorch recommends (DDPOptimizer splits the graph at
        # bucket boundaries); the patch below then wraps the compiled call from outside, so
        # heartbeats and the sync flag stay eager Python that dynamo never traces
        model_out = torch.compile(wrapped)  # type: ignore[assignment]
    _patch_forward(model_out, wrapped, model, strategy, accumulation, PRECISIONS[precision], dev)

    optimizer_out = None
    if optimizer is not None:
        scaler = None
        if precision == "fp16":
            scaler = torch.amp.GradScaler(dev.type)
        optimizer_out = PreparedOptimizer(optimizer, accumulation, scaler)
        _last_optimizer = optimizer_out

    loader_out = None
    if loader is not None:
        loader_out = shard_loader(loader, seed=seed, device=dev)
    del ctx
    return model_out, optimizer_out, loader_out


def _patch_forward(
    target: nn.Module,
    wrapped: nn.Module,
    inner: nn.Module,
    strategy: str,
    accumulation: _Accumulation,
    dtype: torch.dtype | None,
    dev: torch.device,
) -> None:
    """Replace ``target.forward`` (an instance attribute, as accelerate does) with one that
    beats, turns gradient sync on for the last micro-step only, and runs under autocast."""
    forward = target.forward
    is_ddp = isinstance(wrapped, nn.parallel.DistributedDataParallel)

    def prepared_forward(*args: Any, **kwargs: Any) -> Any:
        context.heartbeat()
        if accumulation.grad_accum > 1 and torch.is_grad_enabled():
            sync = accumulation.sync_now
            if is_ddp:
                wrapped.require_backward_grad_sync = sync  # type: ignore[assignment]
            elif strategy == "fsdp":
                inner.set_requires_gradient_sync(sync)  # type: ignore[operator]
        autocast = (
            torch.autocast(device_type=dev.type, dtype=dtype)
            if dtype is not None
            else contextlib.nullcontext()
        )
        with autocast:
            return forward(*args, **kwargs)

    target.forward = prepared_forward  # type: ignore[method-assign]


def loader_state(loader: Any) -> dict[str, int] | None:
    return loader.state_dict() if isinstance(loader, PreparedLoader) else None
