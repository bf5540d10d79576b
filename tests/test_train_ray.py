"""``fj.train.launch(..., backend="ray")`` on a real local Ray instance: 2 actor ranks join a
gloo process group; a rank's exception comes back as RankError naming the rank.

Ray starts once (~15 s here, 35-75 s of wall time for the whole test on a busy 2-core machine)
and shuts down inside the one test that uses it: its raylet and workers are children of this
process, which the per-test leak check would otherwise flag. Because of that cost it runs when
FORKJOIN_TEST_RAY=1 (the CI's slow job), so the default training tests stay under budget.
"""

from __future__ import annotations

import os

import pytest

import forkjoin.train as fjt

pytestmark = [
    pytest.mark.timeout(150),
    pytest.mark.skipif(
        os.environ.get("FORKJOIN_TEST_RAY") != "1",
        reason="starts a Ray instance (~35 s); set FORKJOIN_TEST_RAY=1",
    ),
]


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


def test_ray_gang_runs_and_reports_a_failing_rank() -> None:
    ray = pytest.importorskip("ray")
    ray.init(address="local", include_dashboard=False, num_cpus=2, log_to_driver=False)
    try:
        value = fjt.launch(sum_ranks, workers=2, device="cpu", backend="ray", args=(2.0,))
        with pytest.raises(fjt.RankError) as info:
            fjt.launch(sum_ranks, workers=2, device="cpu", backend="ray", args=(-1.0,))
    finally:
        ray.shutdown()
    assert value == (6.0, 2)
    assert info.value.rank == 1
    assert "rank 1 of 2 raised ValueError: negative scale on rank 1" in str(info.value)
    assert "sum_ranks" in str(info.value.__cause__)
