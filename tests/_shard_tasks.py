"""Rank functions for tests/test_data_shard.py (imported by the ranks fj.train launches)."""

from __future__ import annotations

import os
import signal
from pathlib import Path


def with_square(batch):  # type: ignore[no-untyped-def]
    ids = batch.column("id").to_numpy()
    return {"id": ids, "square": ids * ids}


def train_on_shard(data: str, checkpoints: str, logs: str, run: str, kill_at: int) -> int:
    """Stream this rank's shard; log every row id with its step. With ``kill_at``, save a
    checkpoint at that step and SIGKILL this rank (every rank does: the run is killed
    mid-epoch). Without, just finish the epoch."""
    import forkjoin as fj
    import forkjoin.train as fjt

    shard = fj.data.read_parquet(data).map_batches(with_square).shard(seed=11)
    checkpoint = fjt.load_checkpoint(checkpoints, loader=shard)
    step = checkpoint.step if checkpoint else 0
    rank = fjt.rank()
    log = Path(logs, f"{run}-rank{rank}.txt")
    with open(log, "a") as handle:
        for batch in shard.iter_batches(batch_size=25, backend="threads", workers=1):
            step += 1
            assert (batch["square"] == batch["id"] ** 2).all()
            handle.write(" ".join(str(int(i)) for i in batch["id"]) + "\n")
            handle.flush()
            if kill_at and step == kill_at:
                fjt.save_checkpoint(checkpoints, loader=shard, step=step)
                os.kill(os.getpid(), signal.SIGKILL)
    return step
