"""run_on_devices against a hand-written single-process inference loop on the same device.

    python benchmarks/bench_devices.py                 # CPU (this machine has no GPU)
    python benchmarks/bench_devices.py --device cuda   # on a GPU machine: the issue's GPU check

Contenders, one run, same model (an MLP) and data:
- hand loop: one process, the model on the device, a loop over the batches;
- run_on_devices on that one device: the library's overhead (goal: >= 0.95x of the hand loop
  for large batches, i.e. it adds < 5%). Its worker start-up (a fresh interpreter importing
  torch) is measured apart, with a one-batch call, and reported both included and excluded;
- run_on_devices on every device ("auto": every GPU, or CPU workers): the speedup.
Outputs are checked equal to the hand loop's. Prints a table, writes JSON to benchmarks/results/.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

import forkjoin as fj

HIDDEN = 2048


def load_model(device: str) -> torch.nn.Module:
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(256, HIDDEN), torch.nn.GELU(), torch.nn.Linear(HIDDEN, HIDDEN),
        torch.nn.GELU(), torch.nn.Linear(HIDDEN, 16),
    )  # fmt: skip
    return model.to(device).eval()


def predict(model: torch.nn.Module, batch: np.ndarray) -> np.ndarray:
    device = next(model.parameters()).device
    with torch.inference_mode():
        return model(torch.from_numpy(batch).to(device, non_blocking=True)).float().cpu().numpy()


def hand_loop(data: np.ndarray, batch_size: int, device: str) -> tuple[float, np.ndarray]:
    model = load_model(device)
    predict(model, data[:batch_size])  # warm-up: kernels, allocator
    start = time.perf_counter()
    outputs = [predict(model, data[i : i + batch_size]) for i in range(0, len(data), batch_size)]
    result = np.concatenate(outputs)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - start, result


def on_devices(data: np.ndarray, batch_size: int, devices: Any) -> tuple[float, np.ndarray]:
    start = time.perf_counter()
    result = fj.run_on_devices(
        predict, data, batch_size=batch_size, setup=load_model, devices=devices,
        **({"workers": 1} if devices == "cpu" else {}),
    )  # fmt: skip
    return time.perf_counter() - start, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--rows", type=int, default=40_000)
    parser.add_argument("--batch-size", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", default="benchmarks/results/bench_devices.json")
    args = parser.parse_args()

    data = np.random.default_rng(0).standard_normal((args.rows, 256), dtype=np.float32)
    one_device: Any = "cpu" if args.device == "cpu" else [fj.devices().gpus[0].index]
    hand_device = "cpu" if args.device == "cpu" else "cuda:0"

    hand_runs, one_runs, all_runs, startup_runs = [], [], [], []
    expected = None
    for _ in range(args.repeats):
        seconds, expected = hand_loop(data, args.batch_size, hand_device)
        hand_runs.append(seconds)
        seconds, got = on_devices(data, args.batch_size, one_device)
        assert np.allclose(got, expected, atol=1e-3), "run_on_devices differs from the loop"
        one_runs.append(seconds)
        seconds, got = on_devices(data, args.batch_size, "auto")
        assert np.allclose(got, expected, atol=1e-3), "run_on_devices (auto) differs"
        all_runs.append(seconds)
        seconds, _ = on_devices(data[: args.batch_size], args.batch_size, one_device)
        startup_runs.append(seconds)

    hand, one, every, startup = min(hand_runs), min(one_runs), min(all_runs), min(startup_runs)
    rows = [
        ("hand-written loop, 1 device", hand, 1.0),
        ("run_on_devices, 1 device (incl. start-up)", one, hand / one),
        ("run_on_devices, 1 device (excl. start-up)", one - startup, hand / (one - startup)),
        ("run_on_devices, every device (incl. start-up)", every, hand / every),
        ("start-up of a call (one batch)", startup, float("nan")),
    ]
    print(f"\n{args.rows} rows x 256 -> MLP({HIDDEN}) on {args.device}, batch {args.batch_size}, "
          f"best of {args.repeats}; devices: {fj.devices().gpus or 'no GPU'}")  # fmt: skip
    print(f"{'contender':48} {'seconds':>9} {'rows/s':>11} {'vs loop':>8}")
    for name, seconds, ratio in rows:
        print(f"{name:48} {seconds:9.3f} {args.rows / seconds:11,.0f} {ratio:8.2f}")
    goal = hand / (one - startup)
    print(f"\ngoal: 1-device throughput >= 0.95x the loop (start-up excluded): {goal:.2f}x "
          f"{'PASS' if goal >= 0.95 else 'MISS'}")  # fmt: skip
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "meta": {"device": args.device, "rows": args.rows, "batch_size": args.batch_size,
                 "repeats": args.repeats, "python": platform.python_version(),
                 "torch": torch.__version__, "cpus": os.cpu_count()},
        "seconds": {"hand_loop": hand_runs, "one_device": one_runs, "every_device": all_runs,
                    "startup": startup_runs},
        "ratios": {name: ratio for name, _, ratio in rows if ratio == ratio},
        "goal_one_device_excl_startup": goal,
    }, indent=2))  # fmt: skip
    print(f"JSON: {out}")


if __name__ == "__main__":
    main()
