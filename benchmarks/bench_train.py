"""forkjoin.train.launch against a hand-written torch.multiprocessing DDP script, same model.

    python benchmarks/bench_train.py            # CPU: 2 ranks x 1 thread (this machine)
    python benchmarks/bench_train.py --quick    # a smoke run: few steps

Contenders, each training the same compute-bound MLP (512 -> 2048 -> 2048 -> 2048 -> 10,
9.5 M parameters) with SGD on the same synthetic data, one thread per rank:
- hand DDP: torch.multiprocessing.spawn, init_process_group(gloo), DistributedDataParallel,
  DistributedSampler: what people write (torchrun-style, but spawned from Python);
- forkjoin 2 ranks: fj.train.launch + prepare(), the same loop;
- forkjoin 1 rank: the same per-rank batch, so "2 ranks / 1 rank" is the data-parallel scaling
  (goal: >= 1.7x);
- one process, 2 threads: no distribution at all, the global batch in one process (reported).
samples/s is measured inside the ranks, after WARMUP steps, over all ranks. Launch overhead is
the wall time of a launch minus the loop's time (interpreters, torch import, process group).
Prints a table and writes JSON to benchmarks/results/bench_train.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

SIZES = (512, 2048, 2048, 2048, 10)
PER_RANK_BATCH = 256
WARMUP = 3
SAMPLES = 8192


def make_parts() -> tuple[Any, Any, Any]:
    import torch
    from torch import nn

    torch.manual_seed(0)
    layers: list[nn.Module] = []
    for a, b in zip(SIZES[:-1], SIZES[1:], strict=True):
        layers += [nn.Linear(a, b), nn.ReLU()]
    model = nn.Sequential(*layers[:-1])
    g = torch.Generator().manual_seed(0)
    x = torch.randn(SAMPLES, SIZES[0], generator=g)
    y = torch.randint(0, SIZES[-1], (SAMPLES,), generator=g)
    return model, torch.optim.SGD(model.parameters(), lr=1e-3), torch.utils.data.TensorDataset(x, y)


def loop(model: Any, opt: Any, loader: Any, steps: int) -> tuple[float, int]:
    """The shared loop: seconds and samples (this rank) over the steps after the warm-up."""
    from torch import nn

    step, samples, start = 0, 0, 0.0
    while step < steps + WARMUP:
        for x, y in loader:
            if step == WARMUP:
                start = time.perf_counter()
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            opt.zero_grad()
            step += 1
            if step > WARMUP:
                samples += len(x)
            if step >= steps + WARMUP:
                break
    return time.perf_counter() - start, samples


# -- forkjoin ------------------------------------------------------------------------------------


def forkjoin_rank(steps: int) -> dict[str, float]:
    import torch

    import forkjoin.train as fjt

    model, opt, data = make_parts()
    loader = torch.utils.data.DataLoader(data, batch_size=PER_RANK_BATCH, shuffle=True)
    model, opt, loader = fjt.prepare(model, opt, loader, strategy="ddp")
    seconds, samples = loop(model, opt, loader, steps)
    seconds = max(fjt.all_reduce_mean(seconds), 1e-9)
    return {"seconds": seconds, "samples_per_s": samples * fjt.world_size() / seconds}


def run_forkjoin(ranks: int, steps: int) -> dict[str, float]:
    import forkjoin.train as fjt

    start = time.perf_counter()
    out = fjt.launch(forkjoin_rank, workers=ranks, device="cpu", threads_per_rank=1,
                     args=(steps,))
    out["wall"] = time.perf_counter() - start
    return dict(out)


# -- hand-written DDP (torch.multiprocessing.spawn) ---------------------------------------------


def hand_rank(rank: int, world: int, port: int, steps: int, results: Any) -> None:
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel
    from torch.utils.data import DataLoader, DistributedSampler

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    model, opt, data = make_parts()
    sampler = DistributedSampler(data, num_replicas=world, rank=rank, shuffle=True, seed=0)
    loader = DataLoader(data, batch_size=PER_RANK_BATCH, sampler=sampler)
    model = DistributedDataParallel(model)
    seconds, samples = loop(model, opt, loader, steps)
    t = torch.tensor([seconds])
    dist.all_reduce(t)
    seconds = float(t) / world
    if rank == 0:
        results.put({"seconds": seconds, "samples_per_s": samples * world / seconds})
    dist.destroy_process_group()


def run_hand(ranks: int, steps: int) -> dict[str, float]:
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    results = ctx.SimpleQueue()
    start = time.perf_counter()
    mp.spawn(hand_rank, args=(ranks, port, steps, results), nprocs=ranks, join=True)
    out = dict(results.get())
    out["wall"] = time.perf_counter() - start
    return out


# -- one process, every core ---------------------------------------------------------------------


def run_single(threads: int, steps: int, batch: int) -> dict[str, float]:
    import torch

    torch.set_num_threads(threads)
    model, opt, data = make_parts()
    loader = torch.utils.data.DataLoader(data, batch_size=batch, shuffle=True)
    seconds, samples = loop(model, opt, loader, steps)
    return {"seconds": seconds, "samples_per_s": samples / seconds, "wall": float("nan")}


def noop() -> None:
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="a few steps, to check it runs")
    parser.add_argument("--json", default="benchmarks/results/bench_train.json")
    args = parser.parse_args()
    steps = 3 if args.quick else args.steps
    import torch

    import forkjoin.train as fjt

    start = time.perf_counter()
    fjt.launch(noop, workers=args.ranks, device="cpu", threads_per_rank=1)
    noop_launch = time.perf_counter() - start

    results = {
        "hand DDP (mp.spawn), 2 ranks": run_hand(args.ranks, steps),
        "forkjoin.train, 2 ranks": run_forkjoin(args.ranks, steps),
        "forkjoin.train, 1 rank": run_forkjoin(1, steps),
        "one process, 2 threads": run_single(args.ranks, steps, PER_RANK_BATCH * args.ranks),
    }
    hand = results["hand DDP (mp.spawn), 2 ranks"]["samples_per_s"]
    fj2 = results["forkjoin.train, 2 ranks"]["samples_per_s"]
    fj1 = results["forkjoin.train, 1 rank"]["samples_per_s"]
    single = results["one process, 2 threads"]["samples_per_s"]
    n_params = sum(p.numel() for p in make_parts()[0].parameters())
    print(f"\nMLP {SIZES} ({n_params / 1e6:.1f} M params), SGD, batch {PER_RANK_BATCH}/rank, "
          f"{steps} steps after {WARMUP} warm-up, 1 thread per rank, CPU, gloo")
    print(f"{'contender':34} {'samples/s':>10} {'loop s':>8} {'wall s':>8} {'overhead s':>10}")
    for name, r in results.items():
        overhead = r["wall"] - r["seconds"] if r["wall"] == r["wall"] else float("nan")
        print(f"{name:34} {r['samples_per_s']:10,.0f} {r['seconds']:8.2f} {r['wall']:8.2f} "
              f"{overhead:10.2f}")
    ratios = {
        "forkjoin / hand DDP (2 ranks)": fj2 / hand,
        "forkjoin 2 ranks / 1 rank (goal >= 1.7)": fj2 / fj1,
        "forkjoin 2 ranks / one process 2 threads": fj2 / single,
    }
    print()
    for name, value in ratios.items():
        print(f"{name:44} {value:6.2f}x")
    print(f"launch of a no-op train_fn on {args.ranks} ranks: {noop_launch:.2f} s")
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "meta": {"model": SIZES, "params": n_params, "per_rank_batch": PER_RANK_BATCH,
                 "steps": steps, "warmup": WARMUP, "ranks": args.ranks,
                 "python": platform.python_version(), "torch": torch.__version__,
                 "cpus": os.cpu_count(), "load": os.getloadavg(), "argv": sys.argv[1:]},
        "results": results, "ratios": ratios, "noop_launch_seconds": noop_launch,
    }, indent=2))  # fmt: skip
    print(f"JSON: {out}")


if __name__ == "__main__":
    main()
