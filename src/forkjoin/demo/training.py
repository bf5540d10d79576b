"""Demo section: data-parallel training with forkjoin.train.

An MLP learns scikit-learn's digits (1,437 training images of 8x8 pixels, 10 classes) with a
plain PyTorch loop, first on 1 rank, then on 2 ranks (DDP over gloo, each rank one thread and
half of every epoch). Both must reach the same kind of accuracy on the 360 held-out images; the
section prints each run's samples/s, its accuracy, and what starting a gang costs.

The model is tiny, so 2 ranks are not expected to be faster here: every step all-reduces the
gradients, and at this size that costs about what the step computes. benchmarks/bench_train.py
measures a compute-bound model, where the second rank pays off.
"""

from __future__ import annotations

import time
from typing import Any

from .runner import DemoContext, SectionReport, Step, format_count, format_seconds

DEFAULT_EPOCHS = 20
QUICK_EPOCHS = 6
ACCURACY_FLOOR = 0.9  # both runs; the quick run's 6 epochs reach ~0.95-0.97


def train_digits(epochs: int, hidden: int = 64, lr: float = 3e-3, seed: int = 0) -> dict[str, Any]:
    """One rank's part: the plain loop, prepared by forkjoin.train."""
    import torch
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    from torch import nn

    import forkjoin.train as fjt

    torch.manual_seed(seed)
    x, y = load_digits(return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.2, random_state=0)
    mean, std = x_train.mean(0), x_train.std(0) + 1e-6
    x_train_t = torch.tensor((x_train - mean) / std, dtype=torch.float32)
    x_test_t = torch.tensor((x_test - mean) / std, dtype=torch.float32)
    model = nn.Sequential(nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, 10))
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(x_train_t, torch.tensor(y_train)),
        batch_size=32,
        shuffle=True,
    )
    model, optimizer, loader = fjt.prepare(model, optimizer, loader, seed=seed)
    samples = 0
    start = time.perf_counter()
    for _ in range(epochs):
        for xb, yb in loader:
            loss = nn.functional.cross_entropy(model(xb), yb)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            samples += len(xb)
    seconds = time.perf_counter() - start
    with torch.no_grad():
        predicted = model(x_test_t).argmax(1).numpy()
    return {
        "accuracy": float((predicted == y_test).mean()),
        "samples": samples * fjt.world_size(),
        "seconds": seconds,
    }


class Training:
    name = "training"
    title = "Data-parallel training: a digits MLP on 1 and 2 ranks (forkjoin.train, DDP)"

    def run(self, ctx: DemoContext) -> SectionReport:
        import forkjoin.train as fjt

        epochs = QUICK_EPOCHS if ctx.quick else DEFAULT_EPOCHS
        runs: dict[int, dict[str, Any]] = {}
        for ranks in (1, 2):
            result, wall = ctx.timed(
                fjt.launch, train_digits, workers=ranks, device="cpu", threads_per_rank=1,
                args=(epochs,),
            )
            result["wall"] = wall
            result["rate"] = result["samples"] / result["seconds"]
            runs[ranks] = result
            ctx.say(
                f"    {ranks} rank{'s' if ranks > 1 else ' '}   {format_count(result['rate'])} "
                f"samples/s, test accuracy {result['accuracy']:.3f} "
                f"({epochs} epochs in {format_seconds(result['seconds'])}; "
                f"launch + setup {format_seconds(wall - result['seconds'])})"
            )
        one, two = runs[1], runs[2]
        report = SectionReport(self.name, self.title)
        report.checks = [
            (f"1 rank reaches accuracy >= {ACCURACY_FLOOR}", one["accuracy"] >= ACCURACY_FLOOR),
            (f"2 ranks reach accuracy >= {ACCURACY_FLOOR}", two["accuracy"] >= ACCURACY_FLOOR),
            (
                # the sampler pads 1,437 samples to 1,438 so both ranks take equal shares
                "2 ranks together saw every training sample of every epoch (half each)",
                0 <= two["samples"] - one["samples"] <= epochs,
            ),
        ]
        report.findings = [
            f"samples/s: 1 rank {format_count(one['rate'])}, 2 ranks {format_count(two['rate'])} "
            f"({two['rate'] / one['rate']:.2f}x); a model this small is all-reduce bound",
            f"starting a gang (interpreters, torch import, process group): "
            f"~{format_seconds(two['wall'] - two['seconds'])}",
        ]
        report.steps = [
            Step(f"train {epochs} epochs (1 rank vs 2)", int(one["samples"]), one["seconds"],
                 two["seconds"], 2)
        ]
        return report
