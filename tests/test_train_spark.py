"""``fj.train.launch(..., backend="spark")`` on the session's local Spark: the 2 ranks are one
barrier stage and join a gloo process group; their result equals one rank's; a rank's exception
names the rank; a killed rank stops the gang, which restarts from its checkpoint."""

from __future__ import annotations

import os

import pytest

import forkjoin.train as fjt

pytestmark = [pytest.mark.timeout(240), pytest.mark.train, pytest.mark.cluster]


def fit_mean(data: list[float]) -> float:
    """Data-parallel mean: each rank sums its shard, all_reduce adds them up."""
    import torch
    import torch.distributed as dist

    shard = data[fjt.rank() :: fjt.world_size()]
    total = torch.tensor([sum(shard), float(len(shard))], dtype=torch.float64)
    if dist.is_initialized():
        dist.all_reduce(total)
    if fjt.rank() == 1 and data[0] < 0:
        raise ValueError("negative data on rank 1")
    return float(total[0] / total[1])


def die_once_then_resume(folder: str) -> tuple[int, float]:
    """Rank 1 dies on the first run after the step-2 checkpoint; the restart resumes there."""
    import torch
    import torch.distributed as dist

    path = os.path.join(folder, "ckpt")
    checkpoint = fjt.load_checkpoint(path)  # every rank calls it (it is collective)
    step = int(checkpoint.step) if checkpoint is not None else 0
    total = 0.0
    while step < 4:
        step += 1
        t = torch.tensor([float(step)])
        dist.all_reduce(t)
        total = float(t.item())
        fjt.save_checkpoint(path, step=step)  # every rank calls it too
        if step == 2 and fjt.restart_count() == 0 and fjt.rank() == 1:
            os._exit(1)  # the rank's Python worker dies mid-run
    return fjt.restart_count(), total


def test_spark_gang_equals_a_single_rank_and_names_a_failing_rank(spark_cluster) -> None:
    data = [float(i) for i in range(1, 41)]
    two = fjt.launch(fit_mean, workers=2, device="cpu", backend="spark", args=(data,))
    one = fjt.launch(fit_mean, workers=1, device="cpu", backend="process", args=(data,))
    assert two == one == pytest.approx(20.5)
    with pytest.raises(fjt.RankError) as info:
        fjt.launch(fit_mean, workers=2, device="cpu", backend="spark", args=([-1.0, 2.0],))
    assert info.value.rank == 1
    assert "rank 1 of 2 raised ValueError: negative data on rank 1" in str(info.value)


def test_a_killed_rank_stops_the_gang_and_it_restarts_from_the_checkpoint(
    spark_cluster, tmp_path
) -> None:
    with pytest.raises(fjt.RankCrashedError):
        fjt.launch(die_once_then_resume, workers=2, device="cpu", backend="spark",
                   args=(str(tmp_path / "a"),))  # fmt: skip
    restarts, last = fjt.launch(die_once_then_resume, workers=2, device="cpu", backend="spark",
                                args=(str(tmp_path / "b"),), max_restarts=1)  # fmt: skip
    assert restarts == 1 and last == 8.0  # resumed after step 2, went on to step 4 (4 + 4)
