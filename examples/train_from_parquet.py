"""Preprocess Parquet with forkjoin.data and train on 2 ranks from the stream, in one script.

Each rank streams its own shard of the preprocessed dataset (``ds.shard()``: disjoint, every
row once per epoch, the order fixed by seed and epoch); the preprocessing runs on forkjoin
workers ahead of the training loop; the shard's position goes into the checkpoint, so a rerun
resumes mid-epoch, on any number of ranks.

    python examples/train_from_parquet.py
"""

import os
import tempfile

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

import forkjoin as fj
import forkjoin.train as fjt

TRUE_W = np.array([2.0, -3.0, 0.5], dtype=np.float32)


def features(batch: pa.Table) -> dict:
    """Preprocessing: raw columns -> standardised features and a target."""
    a, b, c = (batch.column(n).to_numpy() for n in ("a", "b", "c"))
    x = np.stack([a / 10.0, np.log1p(b), c], axis=1).astype(np.float32)
    return {"x": list(x), "y": x @ TRUE_W}


def train(data: str, checkpoints: str, epochs: int) -> dict:
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1, bias=False)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    model, optimizer, _ = fjt.prepare(model, optimizer)
    shard = fj.data.read_parquet(data).map_batches(features).shard(seed=0)
    ckpt = fjt.load_checkpoint(checkpoints, model=model, optimizer=optimizer, loader=shard)
    step = ckpt.step if ckpt else 0
    rows = 0
    for epoch in range(shard.epoch, epochs):
        shard.set_epoch(epoch)
        batches = shard.iter_batches(batch_size=50, batch_format="torch", backend="threads")
        while True:
            batch = next(batches, None)
            # DDP needs the same steps on every rank: stop when the first rank runs out
            if fjt.all_reduce_mean(0.0 if batch is None else 1.0) < 1.0:
                break
            loss = torch.nn.functional.mse_loss(model(batch["x"]).squeeze(1), batch["y"])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            rows += len(batch["y"])
            step += 1
        fjt.save_checkpoint(checkpoints, model=model, optimizer=optimizer, loader=shard,
                            step=step)  # fmt: skip
    weights = fjt.unwrap(model).weight.detach().numpy().ravel()
    return {"rows": fjt.all_reduce_mean(float(rows)) * fjt.world_size(), "weights": weights,
            "loss": fjt.all_reduce_mean(loss.item())}  # fmt: skip


if __name__ == "__main__":
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as folder:
        data = os.path.join(folder, "raw")
        os.makedirs(data)
        for part in range(8):
            n = 500
            pq.write_table(pa.table({"a": rng.normal(0, 10, n), "b": rng.uniform(0, 5, n),
                                     "c": rng.normal(0, 1, n)}),
                           os.path.join(data, f"part-{part}.parquet"))  # fmt: skip
        result = fjt.launch(train, workers=2, device="cpu",
                            args=(data, os.path.join(folder, "ckpt"), 3))  # fmt: skip
    assert result["rows"] == 3 * 8 * 500, "every row once per epoch across the 2 ranks"
    assert np.allclose(result["weights"], TRUE_W, atol=0.05), result["weights"]
    print(f"2 ranks trained 3 epochs on {result['rows']:.0f} streamed rows; "
          f"weights {np.round(result['weights'], 3)} (true {TRUE_W}), loss {result['loss']:.2e}")
