"""``log``: one call on every rank, one line from rank 0.

Metrics are averaged over the ranks (one all-reduce for all of them); ``samples`` and
``tokens`` (processed by this rank since its last ``log``) are summed, and divided by the time
since the previous ``log`` give samples/s and tokens/s. Rank 0 prints a line and, when a log
file is set (``file=`` or ``FORKJOIN_TRAIN_LOG``, which ``launch(log_file=)`` sets), appends
a JSON line.

MFU (model FLOPs utilisation) = achieved model FLOP/s / (peak FLOP/s per device x ranks), with
the model's FLOPs per token estimated as in the PaLM paper (Chowdhery et al. 2022, appendix B):
``6 N + 12 L H Q T`` for N parameters, L layers, H heads, head size Q, sequence length T; this
is the estimate nanoGPT's ``estimate_mfu`` uses. Peak FLOP/s comes from ``peak_flops=``,
``FORKJOIN_PEAK_FLOPS``, or the bf16 dense figure of a known GPU; MFU is left out otherwise.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any, TextIO

import torch
import torch.distributed as dist

from . import context

__all__ = ["log", "transformer_flops_per_token", "peak_flops_per_device"]

# bf16 dense tensor-core peaks from the vendors' data sheets (FLOP/s, no sparsity)
KNOWN_PEAK_FLOPS = {
    "H200": 989e12,
    "H100": 989e12,
    "A100": 312e12,
    "L40S": 362e12,
    "A10G": 70e12,
    "L4": 121e12,
}

_last: dict[str, float] = {}


def transformer_flops_per_token(
    n_params: int, n_layer: int = 0, n_head: int = 0, head_dim: int = 0, seq_len: int = 0
) -> float:
    """Training FLOPs per token, forward + backward: ``6N + 12 L H Q T`` (PaLM, appendix B)."""
    return 6.0 * n_params + 12.0 * n_layer * n_head * head_dim * seq_len


def peak_flops_per_device() -> float | None:
    """This rank's device's bf16 peak FLOP/s, when known (``FORKJOIN_PEAK_FLOPS`` overrides)."""
    env = os.environ.get("FORKJOIN_PEAK_FLOPS")
    if env:
        return float(env)
    if context.current().device_type != "cuda" or not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name(context.device())
    for key, value in KNOWN_PEAK_FLOPS.items():
        if key in name:
            return value
    return None


def _number(value: Any) -> float:
    if isinstance(value, torch.Tensor):
        return float(value.detach().float().mean().item())
    return float(value)


def log(
    step: int | None = None,
    *,
    samples: int = 0,
    tokens: int = 0,
    flops_per_token: float | None = None,
    flops_per_sample: float | None = None,
    peak_flops: float | None = None,
    file: str | os.PathLike[str] | None = None,
    echo: bool = True,
    stream: TextIO | None = None,
    **metrics: Any,
) -> dict[str, Any]:
    """Average ``metrics`` over all ranks and report them from rank 0; every rank must call it
    with the same metric names. Returns the aggregated record on every rank."""
    context.heartbeat()
    names = sorted(metrics)
    values = [_number(metrics[k]) for k in names]
    world = context.world_size()
    packed = torch.tensor([*values, float(samples), float(tokens)], dtype=torch.float64)
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        device = context.device() if context.current().device_type == "cuda" else "cpu"
        packed_dev = packed.to(device, dtype=torch.float32 if device != "cpu" else torch.float64)
        dist.all_reduce(packed_dev, op=dist.ReduceOp.SUM)
        packed = packed_dev.to("cpu", torch.float64)
        packed[: len(names)] /= world
    now = time.perf_counter()
    previous = _last.get("time")
    _last["time"] = now
    record: dict[str, Any] = {}
    if step is not None:
        record["step"] = step
    record.update({k: float(v) for k, v in zip(names, packed[: len(names)].tolist(), strict=True)})
    total_samples, total_tokens = packed[-2].item(), packed[-1].item()
    if previous is not None and now > previous:
        elapsed = now - previous
        if total_samples:
            record["samples_per_s"] = total_samples / elapsed
        if total_tokens:
            record["tokens_per_s"] = total_tokens / elapsed
        achieved = None
        if flops_per_token and total_tokens:
            achieved = flops_per_token * total_tokens / elapsed
        elif flops_per_sample and total_samples:
            achieved = flops_per_sample * total_samples / elapsed
        peak = peak_flops or peak_flops_per_device()
        if achieved is not None:
            record["model_tflops"] = achieved / 1e12
            if peak:
                record["mfu"] = achieved / (peak * world)
    context.heartbeat()
    if context.rank() == 0:
        if echo:
            print(_line(record), file=stream or sys.stdout, flush=True)
        target = file or os.environ.get("FORKJOIN_TRAIN_LOG")
        if target:
            with open(target, "a") as f:
                f.write(json.dumps({"time": time.time(), **record}) + "\n")
    return record


def _line(record: dict[str, Any]) -> str:
    parts = []
    for key, value in record.items():
        if key == "step":
            parts.append(f"step {value}")
        elif key == "samples_per_s":
            parts.append(f"{value:,.0f} samples/s")
        elif key == "tokens_per_s":
            parts.append(f"{value:,.0f} tokens/s")
        elif key == "mfu":
            parts.append(f"MFU {value:.1%}")
        elif key == "model_tflops":
            parts.append(f"{value:.2f} TFLOP/s")
        else:
            parts.append(f"{key} {value:.4g}")
    return " | ".join(parts)
