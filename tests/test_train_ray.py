"""``fj.train.launch(..., backend="ray")`` on a real local Ray instance: 2 actor ranks join a
gloo process group; a rank's exception comes back as RankError naming the rank.

The ranks run on the session's local Ray (conftest.py's ``ray_cluster``), started once for all
the Ray tests.
"""

from __future__ import annotations

import pytest

import forkjoin.train as fjt

pytestmark = pytest.mark.timeout(150)


def sum_ranks(scale: float) -> tuple[float, int]:
    import torch
    import torch.distributed as dist

    t = torch.tensor([scale * (fjt.rank() + 1)])
    dist.all_reduce(t)
    if fjt.rank() == 1:
        raise_if_asked = scale < 0
        if raise_if_asked:
            raise ValueError("negative scale on rank 1")
    return float(t.item()), fjt.world_size()


def test_ray_gang_runs_and_reports_a_failing_rank(ray_cluster) -> None:
    # ray_cluster (conftest.py): the session's local Ray, 2 CPUs, started once for every test
    value = fjt.launch(sum_ranks, workers=2, device="cpu", backend="ray", args=(2.0,))
    with pytest.raises(fjt.RankError) as info:
        fjt.launch(sum_ranks, workers=2, device="cpu", backend="ray", args=(-1.0,))
    assert value == (6.0, 2)
    assert info.value.rank == 1
    assert "rank 1 of 2 raised ValueError: negative scale on rank 1" in str(info.value)
    assert "sum_ranks" in str(info.value.__cause__)
