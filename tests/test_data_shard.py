"""``ds.shard(rank, world_size)`` (issue 18): every row once per epoch across ranks, an order
fixed by (seed, epoch), and a position that resumes mid-epoch on another number of ranks."""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import forkjoin as fj  # noqa: E402
from forkjoin.data.shard import merge_states  # noqa: E402

pytestmark = pytest.mark.timeout(120)
ROWS = 1200


@pytest.fixture
def data(tmp_path: Path) -> Path:
    folder = tmp_path / "data"
    folder.mkdir()
    for part in range(12):  # 12 files: at least 12 units to deal out
        ids = list(range(part * 100, (part + 1) * 100))
        pq.write_table(pa.table({"id": ids}), folder / f"part-{part:02d}.parquet")
    return folder


def rows_of(shard, **kwargs) -> list[int]:  # type: ignore[no-untyped-def]
    kwargs.setdefault("backend", "threads")
    return [int(i) for b in shard.iter_batches(batch_size=32, **kwargs) for i in b["id"]]


def test_ranks_cover_every_row_once_in_an_order_fixed_by_seed_and_epoch(data: Path) -> None:
    ds = fj.data.read_parquet(str(data))
    shards = [ds.shard(rank, 3, seed=5) for rank in range(3)]
    seen = [rows_of(s) for s in shards]
    assert sorted(sum(seen, [])) == list(range(ROWS))
    assert all(seen), "every rank got a share"
    again = rows_of(ds.shard(1, 3, seed=5))
    assert again == seen[1], "same seed and epoch: same rows in the same order"
    next_epoch = rows_of(shards[1])  # a full pass ended epoch 0: this is epoch 1
    assert shards[1].epoch == 1 and next_epoch != seen[1]
    assert rows_of(ds.shard(1, 3, seed=6)) != seen[1]


def test_a_position_resumes_on_another_number_of_ranks(data: Path) -> None:
    ds = fj.data.read_parquet(str(data))
    before = [ds.shard(rank, 2, seed=3) for rank in range(2)]
    consumed: list[int] = []
    for shard in before:  # each rank takes 7 batches of 32 rows, then "dies"
        iterator = shard.iter_batches(batch_size=32, backend="threads")
        for _ in range(7):
            consumed += [int(i) for i in next(iterator)["id"]]
        iterator.close()  # type: ignore[attr-defined]
    state = merge_states([s.local_state() for s in before])
    after = [ds.shard(rank, 3, seed=3) for rank in range(3)]
    rest: list[int] = []
    for shard in after:
        shard.load_state_dict(state)
        rest += rows_of(shard)
    assert sorted(consumed + rest) == list(range(ROWS)), "every row of the epoch exactly once"
    with pytest.raises(ValueError, match="partitions"):
        fj.data.from_items([{"id": 1}]).shard(0, 1).load_state_dict(state)


def test_shard_refuses_a_plan_that_regroups_rows(data: Path) -> None:
    with pytest.raises(ValueError, match="materialize"):
        fj.data.read_parquet(str(data)).sort("id").shard(0, 2)


def _seen(logs: Path, run: str) -> list[int]:
    return [int(i) for f in sorted(logs.glob(f"{run}-rank*.txt"))
            for line in f.read_text().splitlines() for i in line.split()]  # fmt: skip


@pytest.mark.train
@pytest.mark.timeout(240)
def test_two_ranks_killed_mid_epoch_resume_on_one_and_on_three_exactly_once(
    data: Path, tmp_path: Path
) -> None:
    """Real gloo ranks: both ranks SIGKILLed right after the checkpoint at step 6; the run
    resumes from it on 1 rank, and (from a copy) on 3: every row of the epoch seen once."""
    from _shard_tasks import train_on_shard

    import forkjoin.train as fjt

    checkpoints, logs = tmp_path / "ckpt", tmp_path / "logs"
    logs.mkdir()
    with pytest.raises(fjt.RankCrashedError):
        fjt.launch(train_on_shard, workers=2, device="cpu",
                   args=(str(data), str(checkpoints), str(logs), "first", 6))  # fmt: skip
    first = _seen(logs, "first")
    assert len(first) == 2 * 6 * 25, "both ranks took 6 steps of 25 rows before the kill"
    copy = tmp_path / "ckpt-copy"
    shutil.copytree(checkpoints, copy)

    fjt.launch(train_on_shard, workers=1, device="cpu",
               args=(str(data), str(checkpoints), str(logs), "on1", 0))  # fmt: skip
    counts = Counter(first + _seen(logs, "on1"))
    assert sorted(counts) == list(range(ROWS)) and set(counts.values()) == {1}

    fjt.launch(train_on_shard, workers=3, device="cpu",
               args=(str(data), str(copy), str(logs), "on3", 0))  # fmt: skip
    counts = Counter(first + _seen(logs, "on3"))
    assert sorted(counts) == list(range(ROWS)) and set(counts.values()) == {1}
