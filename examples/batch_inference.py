"""Batch inference of a torch model over a numpy dataset on every device, with run_on_devices.

On a machine with GPUs each GPU gets a worker process with the model loaded once; here, without
GPUs, the same code runs on CPU workers. The output is checked against a plain loop.

    python examples/batch_inference.py
"""

import time

import numpy as np
import torch

import forkjoin as fj


def load_model(device: str) -> torch.nn.Module:
    """Runs once per worker, on its device ("cuda:0" in a worker pinned to a GPU, or "cpu")."""
    torch.manual_seed(0)  # the same weights in every worker, and in the check below
    model = torch.nn.Sequential(
        torch.nn.Linear(64, 256), torch.nn.GELU(), torch.nn.Linear(256, 256), torch.nn.GELU(),
        torch.nn.Linear(256, 10),
    )  # fmt: skip
    return model.to(device).eval()


def predict(model: torch.nn.Module, batch: np.ndarray) -> np.ndarray:
    device = next(model.parameters()).device
    with torch.no_grad():
        return model(torch.from_numpy(batch).to(device)).argmax(dim=1).cpu().numpy()


if __name__ == "__main__":
    dataset = np.random.default_rng(0).standard_normal((50_000, 64), dtype=np.float32)

    start = time.perf_counter()
    labels = fj.run_on_devices(predict, dataset, batch_size=2048, setup=load_model)
    elapsed = time.perf_counter() - start

    model = load_model("cpu")
    expected = np.concatenate(
        [predict(model, dataset[i : i + 2048]) for i in range(0, len(dataset), 2048)]
    )
    assert labels.shape == (len(dataset),) and np.array_equal(labels, expected)
    devices = [g.index for g in fj.devices().gpus] or "cpu workers"
    print(f"{len(dataset)} rows classified on {devices} in {elapsed:.2f} s; matches a plain loop")
