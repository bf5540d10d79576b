"""``fj.train.launch(..., backend="spark")`` on the session's local Spark: the 2 ranks are one
barrier stage and join a gloo process group; their result equals one rank's; a rank's exception
names the rank. (A rank killed mid-run is not tested here yet: see the branch notes.)"""

from __future__ import annotations

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


def test_spark_gang_equals_a_single_rank_and_names_a_failing_rank(spark_cluster) -> None:
    data = [float(i) for i in range(1, 41)]
    two = fjt.launch(fit_mean, workers=2, device="cpu", backend="spark", args=(data,))
    one = fjt.launch(fit_mean, workers=1, device="cpu", backend="process", args=(data,))
    assert two == one == pytest.approx(20.5)
    with pytest.raises(fjt.RankError) as info:
        fjt.launch(fit_mean, workers=2, device="cpu", backend="spark", args=([-1.0, 2.0],))
    assert info.value.rank == 1
    assert "rank 1 of 2 raised ValueError: negative data on rank 1" in str(info.value)
