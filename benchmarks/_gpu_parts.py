"""The pieces gpu_check.py times: a GPT-2 model written out, its training step by hand and through
``fj.train``, a collective on a gang of one, and an inference stage. Ranks import this module by
name (gpu_check.py puts this folder on their PYTHONPATH)."""

from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F


@dataclass(frozen=True)
class GPTConfig:
    vocab: int = 50304  # GPT-2's 50257 rounded up to a multiple of 64 (as nanoGPT does)
    ctx: int = 1024
    layers: int = 12
    heads: int = 12
    dim: int = 768


TINY = GPTConfig(vocab=512, ctx=64, layers=2, heads=2, dim=64)


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(cfg.dim), nn.LayerNorm(cfg.dim)
        self.qkv = nn.Linear(cfg.dim, 3 * cfg.dim)
        self.proj = nn.Linear(cfg.dim, cfg.dim)
        self.mlp = nn.Sequential(nn.Linear(cfg.dim, 4 * cfg.dim), nn.GELU(approximate="tanh"),
                                 nn.Linear(4 * cfg.dim, cfg.dim))  # fmt: skip
        self.heads = cfg.heads

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(c, dim=2)
        q, k, v = (z.view(b, t, self.heads, c // self.heads).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(y.transpose(1, 2).contiguous().view(b, t, c))
        return x + self.mlp(self.ln2(x))


class GPT(nn.Module):
    """GPT-2 (124M at the default config): token + position embeddings, pre-LN blocks, tied
    output head."""

    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.tok = nn.Embedding(cfg.vocab, cfg.dim)
        self.pos = nn.Embedding(cfg.ctx, cfg.dim)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.layers))
        self.ln = nn.LayerNorm(cfg.dim)
        self.head = nn.Linear(cfg.dim, cfg.vocab, bias=False)
        self.head.weight = self.tok.weight

    def forward(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(idx.shape[1], device=idx.device)
        x = self.tok(idx) + self.pos(positions)
        for block in self.blocks:
            x = block(x)
        logits = self.head(self.ln(x))
        return F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1))


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def flops_per_token(model: GPT) -> float:
    """PaLM appendix B (as nanoGPT's estimate_mfu): 6N + 12 L H Q T."""
    cfg = model.cfg
    return 6 * n_params(model) + 12 * cfg.layers * cfg.heads * (cfg.dim // cfg.heads) * cfg.ctx


def batch(cfg: GPTConfig, size: int, device: Any, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(step)
    data = torch.randint(0, cfg.vocab, (size, cfg.ctx + 1), generator=generator)
    data = data.to(device, non_blocking=True)
    return data[:, :-1], data[:, 1:]


def _sync(device: Any) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def time_steps(step: Any, cfg: GPTConfig, size: int, device: Any, warmup: int,
               steps: int) -> float:  # fmt: skip
    """Seconds per training step, after ``warmup`` steps (compilation, allocator)."""
    for i in range(warmup):
        step(*batch(cfg, size, device, i))
    _sync(device)
    start = time.perf_counter()
    for i in range(steps):
        step(*batch(cfg, size, device, warmup + i))
    _sync(device)
    return (time.perf_counter() - start) / steps


def hand_written(cfg_dict: dict[str, int], size: int, device: str, compile: bool, warmup: int,
                 steps: int) -> dict[str, float]:  # fmt: skip
    """The plain loop: bf16 autocast on CUDA, AdamW, no forkjoin."""
    torch.manual_seed(0)
    cfg = GPTConfig(**cfg_dict)
    model = GPT(cfg).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4, fused=device.startswith("cuda"))
    forward = torch.compile(model) if compile else model
    dtype = torch.bfloat16 if device.startswith("cuda") else None

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        with torch.autocast(device_type=torch.device(device).type, dtype=dtype,
                            enabled=dtype is not None):  # fmt: skip
            loss = forward(x, y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    seconds = time_steps(step, cfg, size, device, warmup, steps)
    return {"seconds_per_step": seconds, "tokens_per_step": size * cfg.ctx,
            "flops_per_token": flops_per_token(model)}  # fmt: skip


def through_forkjoin(cfg_dict: dict[str, int], size: int, compile: bool, warmup: int,
                     steps: int) -> dict[str, float]:  # fmt: skip
    """The same step inside fj.train.launch + prepare (runs on rank 0 of a gang of 1)."""
    import forkjoin.train as fjt

    torch.manual_seed(0)
    cfg = GPTConfig(**cfg_dict)
    device = fjt.device()
    model = GPT(cfg).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4, fused=device.type == "cuda")
    precision = "bf16" if device.type == "cuda" else "fp32"
    model, optimizer, _ = fjt.prepare(model, optimizer, precision=precision, compile=compile)

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        loss = model(x, y)
        fjt.backward(loss)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    seconds = time_steps(step, cfg, size, device, warmup, steps)
    return {"seconds_per_step": seconds, "tokens_per_step": size * cfg.ctx,
            "flops_per_token": flops_per_token(fjt.unwrap(model)),
            "gang": gang_all_reduce(1 << 20)}  # fmt: skip


def gang_all_reduce(size: int) -> dict[str, float]:
    """A collective on the gang (nccl on CUDA, gloo on CPU): its result and time."""
    import torch.distributed as dist

    import forkjoin.train as fjt

    tensor = torch.ones(size, device=fjt.device())
    dist.all_reduce(tensor)
    _sync(tensor.device)
    start = time.perf_counter()
    for _ in range(10):
        dist.all_reduce(tensor)
    _sync(tensor.device)
    return {"backend": dist.get_backend(), "seconds": (time.perf_counter() - start) / 10,
            "value": float(tensor[0].item()), "world": dist.get_world_size()}  # fmt: skip


def config_dict(cfg: GPTConfig) -> dict[str, int]:
    return asdict(cfg)


def mfu(result: dict[str, float], peak: float | None) -> float | None:
    if not peak:
        return None
    achieved = result["flops_per_token"] * result["tokens_per_step"] / result["seconds_per_step"]
    return achieved / peak


def tokens_per_second(result: dict[str, float]) -> float:
    return result["tokens_per_step"] / result["seconds_per_step"]


def finite(value: float) -> bool:
    return math.isfinite(value)


def device_peak() -> float | None:
    env = os.environ.get("FORKJOIN_PEAK_FLOPS")
    if env:
        return float(env)
    if not torch.cuda.is_available():
        return None
    from forkjoin.train.metrics import KNOWN_PEAK_FLOPS

    name = torch.cuda.get_device_name(0)
    return next((v for k, v in KNOWN_PEAK_FLOPS.items() if k in name), None)
