"""Train an MLP on scikit-learn's digits (8x8 images, 10 classes) with forkjoin.train.

The loop is plain PyTorch; forkjoin.train adds the gang (``launch``), data parallelism and a
sharded loader (``prepare``), and aggregated logging (``log``). Run:

    python examples/train_mlp_digits.py                       # 2 CPU ranks, DDP
    python examples/train_mlp_digits.py --workers 1 2 --epochs 20   # 1 rank, then 2
    FORKJOIN_EXAMPLE_SIZE=small python examples/train_mlp_digits.py   # the tests' size

Prints each rank count's samples/s and the test accuracy (>= 0.95 expected).
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Any

import forkjoin.train as fjt

SIZES = {"small": {"epochs": 12, "hidden": 64}, "full": {"epochs": 30, "hidden": 128}}


def load_digits() -> tuple[Any, Any, Any, Any]:
    """Standardised train/test tensors (a fixed split, so every rank and run agree)."""
    import torch
    from sklearn.datasets import load_digits as sk_digits
    from sklearn.model_selection import train_test_split

    x, y = sk_digits(return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.2, random_state=0)
    mean, std = x_train.mean(0), x_train.std(0) + 1e-6
    as_x = lambda a: torch.tensor((a - mean) / std, dtype=torch.float32)  # noqa: E731
    as_y = lambda a: torch.tensor(a, dtype=torch.long)  # noqa: E731
    return as_x(x_train), as_y(y_train), as_x(x_test), as_y(y_test)


def train_digits(
    epochs: int = 12,
    hidden: int = 64,
    lr: float = 3e-3,
    batch_size: int = 32,
    seed: int = 0,
    verbose: bool = True,
) -> dict[str, float]:
    """One rank's work (also runs as a plain single process). Returns test accuracy,
    samples/s over all ranks, and the loop's seconds."""
    import torch
    from torch import nn

    torch.manual_seed(seed)
    x_train, y_train, x_test, y_test = load_digits()
    model = nn.Sequential(
        nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
        nn.Linear(hidden, 10),
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(x_train, y_train), batch_size=batch_size, shuffle=True
    )
    model, optimizer, loader = fjt.prepare(model, optimizer, loader, seed=seed)

    samples = 0
    start = time.perf_counter()
    fjt.log(echo=False)  # starts the samples/s clock
    for epoch in range(epochs):
        seen = 0
        for x, y in loader:
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            seen += len(x)
        samples += seen
        record = fjt.log(step=epoch, loss=loss.detach(), samples=seen,
                         echo=verbose and (epoch % 5 == 4 or epoch == epochs - 1))
    seconds = time.perf_counter() - start

    model.eval()
    with torch.no_grad():
        accuracy = (model(x_test).argmax(1) == y_test).float().mean()
    total = fjt.all_reduce_mean(samples) * fjt.world_size()
    return {
        "accuracy": float(accuracy),
        "samples_per_s": total / seconds,
        "seconds": seconds,
        "final_loss": record["loss"],
    }


def main() -> None:
    size = os.environ.get("FORKJOIN_EXAMPLE_SIZE", "small")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[2],
                        help="rank counts to run, one after the other")
    parser.add_argument("--epochs", type=int, default=SIZES[size]["epochs"])
    parser.add_argument("--hidden", type=int, default=SIZES[size]["hidden"])
    args = parser.parse_args()
    for workers in args.workers:
        # one thread per rank: these matrices are too small for a thread pool to pay off
        result = fjt.launch(train_digits, workers=workers, device="cpu", threads_per_rank=1,
                            kwargs={"epochs": args.epochs, "hidden": args.hidden})
        print(
            f"{workers} rank(s): {result['samples_per_s']:,.0f} samples/s, "
            f"test accuracy {result['accuracy']:.3f} ({result['seconds']:.1f} s)"
        )
        assert result["accuracy"] >= 0.95, result


if __name__ == "__main__":
    main()
