"""A small GPT, trained character by character on the Python standard library's own source.

The corpus is on every machine that has Python: the ``.py`` files of the standard library. The
model is nanoGPT's in miniature (token + position embeddings, pre-norm blocks of causal
self-attention and an MLP); the loop is plain PyTorch; forkjoin.train runs it on N ranks with
DDP, bf16 autocast if asked, and logs loss, tokens/s and (on GPUs) MFU. Run:

    python examples/train_char_gpt.py --workers 2                 # small, a few seconds
    python examples/train_char_gpt.py --size full --workers 2 --precision bf16
    python examples/train_char_gpt.py --size full --device cuda    # one rank per GPU

Prints the loss before and after, and a sample of generated text.
"""

from __future__ import annotations

import argparse
import math
import os
import sysconfig
from pathlib import Path
from typing import Any

import forkjoin.train as fjt

SIZES = {
    "small": dict(chars=200_000, layers=2, heads=2, dim=64, block=64, batch=16, steps=60),
    "full": dict(chars=5_000_000, layers=6, heads=6, dim=384, block=256, batch=32, steps=2000),
}


def stdlib_corpus(chars: int) -> str:
    """The first ``chars`` characters of the standard library's .py files, in sorted order."""
    root = Path(sysconfig.get_paths()["stdlib"])
    parts, total = [], 0
    for path in sorted(root.glob("*.py")):
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        parts.append(text)
        total += len(text)
        if total >= chars:
            break
    return "".join(parts)[:chars]


def build_model(vocab: int, cfg: dict[str, int]) -> Any:
    import torch
    from torch import nn
    from torch.nn import functional as F

    class Block(nn.Module):
        def __init__(self, dim: int, heads: int) -> None:
            super().__init__()
            self.heads = heads
            self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
            self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
            self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            b, t, c = x.shape
            q, k, v = self.qkv(self.ln1(x)).split(c, dim=2)
            q, k, v = (z.view(b, t, self.heads, c // self.heads).transpose(1, 2)
                       for z in (q, k, v))
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            x = x + self.proj(y.transpose(1, 2).reshape(b, t, c))
            return x + self.mlp(self.ln2(x))

    class GPT(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.tok = nn.Embedding(vocab, cfg["dim"])
            self.pos = nn.Embedding(cfg["block"], cfg["dim"])
            self.blocks = nn.ModuleList(Block(cfg["dim"], cfg["heads"])
                                        for _ in range(cfg["layers"]))
            self.ln = nn.LayerNorm(cfg["dim"])
            self.head = nn.Linear(cfg["dim"], vocab, bias=False)

        def forward(self, idx: torch.Tensor) -> torch.Tensor:
            x = self.tok(idx) + self.pos(torch.arange(idx.shape[1], device=idx.device))
            for block in self.blocks:
                x = block(x)
            return self.head(self.ln(x))

    return GPT()


def train_gpt(size: str = "small", precision: str = "fp32", steps: int | None = None,
              sample_chars: int = 120) -> dict[str, Any]:
    import torch
    from torch.nn import functional as F

    cfg = dict(SIZES[size])
    if steps is not None:
        cfg["steps"] = steps
    with fjt.main_first():  # the corpus is read once on rank 0 first (a cache would go here)
        text = stdlib_corpus(cfg["chars"])
    chars = sorted(set(text))
    index = {ch: i for i, ch in enumerate(chars)}
    data = torch.tensor([index[ch] for ch in text], dtype=torch.long)
    block = cfg["block"]
    windows = (len(data) - 1) // block
    x = data[: windows * block].view(windows, block)
    y = data[1 : windows * block + 1].view(windows, block)

    torch.manual_seed(0)
    model = build_model(len(chars), cfg)
    n_params = sum(p.numel() for p in model.parameters())
    flops = fjt.transformer_flops_per_token(
        n_params, cfg["layers"], cfg["heads"], cfg["dim"] // cfg["heads"], block
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(x, y), batch_size=cfg["batch"], shuffle=True,
        drop_last=True,
    )
    model, optimizer, loader = fjt.prepare(model, optimizer, loader, precision=precision)

    losses: list[float] = []
    step = tokens = 0
    fjt.log(echo=False)
    while step < cfg["steps"]:
        for xb, yb in loader:
            logits = model(xb)
            loss = F.cross_entropy(logits.float().view(-1, len(chars)), yb.reshape(-1))
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            losses.append(float(loss.detach()))
            step += 1
            tokens += xb.numel()
            if step % max(1, cfg["steps"] // 5) == 0 or step == cfg["steps"]:
                fjt.log(step=step, loss=loss.detach(), tokens=tokens, flops_per_token=flops)
                tokens = 0
            if step >= cfg["steps"]:
                break

    sample = ""
    if fjt.is_main():
        inner = fjt.unwrap(model).eval()
        idx = torch.tensor([[index["d"]]], device=fjt.device())
        with torch.no_grad():
            for _ in range(sample_chars):
                probs = F.softmax(inner(idx[:, -block:])[:, -1].float(), dim=-1)
                idx = torch.cat([idx, torch.multinomial(probs, 1)], dim=1)
        sample = "".join(chars[i] for i in idx[0].tolist())
    return {
        "initial_loss": sum(losses[:3]) / 3,
        "final_loss": sum(losses[-3:]) / 3,
        "uniform_loss": math.log(len(chars)),
        "params": n_params,
        "sample": sample,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES),
                        default=os.environ.get("FORKJOIN_EXAMPLE_SIZE", "small"))
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    parser.add_argument("--steps", type=int, default=None)
    args = parser.parse_args()
    result = fjt.launch(train_gpt, workers=args.workers, device=args.device,
                        kwargs={"size": args.size, "precision": args.precision,
                                "steps": args.steps})
    print(f"{result['params']:,} parameters; loss {result['initial_loss']:.3f} -> "
          f"{result['final_loss']:.3f} (uniform guess: {result['uniform_loss']:.3f})")
    print("sample:", repr(result["sample"]))
    assert result["final_loss"] < result["initial_loss"] - 0.5, result


if __name__ == "__main__":
    main()
