"""Hyper-parameter trials of the digits MLP, run in parallel as forkjoin tasks.

Each trial is one small single-process training run (``train_digits`` from
train_mlp_digits.py, which works without a gang too), so trials are independent tasks:
``fj.map`` spreads them over the worker processes, one thread each, and the best is reported.
Run:

    python examples/train_hparam_trials.py                 # 4 trials, 2 workers
    FORKJOIN_EXAMPLE_SIZE=full python examples/train_hparam_trials.py   # 12 trials
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
from pathlib import Path
from typing import Any

import forkjoin as fj

sys.path.insert(0, str(Path(__file__).parent))  # workers import train_mlp_digits by name

SIZES = {
    "small": {"hidden": [32, 64], "lr": [3e-3, 3e-2], "epochs": 8},
    "full": {"hidden": [32, 64, 128], "lr": [1e-3, 3e-3, 1e-2, 3e-2], "epochs": 25},
}


def run_trial(config: dict[str, Any]) -> dict[str, Any]:
    """One trial in a forkjoin worker: a plain single-process run (no gang)."""
    import torch
    from train_mlp_digits import train_digits

    torch.set_num_threads(1)
    result = train_digits(verbose=False, **config)
    return {**config, **result}


def main() -> None:
    size = os.environ.get("FORKJOIN_EXAMPLE_SIZE", "small")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    grid = SIZES[size]
    configs = [
        {"hidden": h, "lr": lr, "epochs": grid["epochs"]}
        for h, lr in itertools.product(grid["hidden"], grid["lr"])
    ]
    results = fj.map(run_trial, configs, workers=args.workers, chunksize=1, retries=0)
    for r in sorted(results, key=lambda r: -r["accuracy"]):
        print(f"hidden {r['hidden']:4d}  lr {r['lr']:<7g} accuracy {r['accuracy']:.3f}  "
              f"({r['seconds']:.1f} s)")
    best = max(results, key=lambda r: r["accuracy"])
    print(f"best: hidden={best['hidden']} lr={best['lr']:g} -> accuracy {best['accuracy']:.3f}")
    assert best["accuracy"] >= 0.95, best


if __name__ == "__main__":
    main()
