"""Stages (issue 18): callable classes built once per worker, per-stage workers and resources,
streaming between stages with a memory bound, order kept or not, faults.

GPUs here are logical (``FORKJOIN_GPUS=0,1``), as in tests/test_resources.py: pinning is checked
through the ``CUDA_VISIBLE_DEVICES`` each stage worker sees.
"""

from __future__ import annotations

import collections
import functools
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from _stage_tasks import (  # noqa: E402
    BrokenModel,
    CountingModel,
    DiesOnce,
    LoggedModel,
    WaitsForTheOthers,
    WhereAmI,
    count,
    logged,
    slow_first,
    stage_pid,
    worker_pid,
)

import forkjoin as fj  # noqa: E402
from forkjoin.data import pipeline  # noqa: E402
from forkjoin.data.stages import StageError  # noqa: E402

pytestmark = pytest.mark.timeout(90)


def items(n: int, partitions: int | None = None) -> fj.data.Dataset:
    return fj.data.from_items([{"x": i} for i in range(n)], partitions=partitions)


@pytest.fixture
def two_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FORKJOIN_GPUS", "0,1")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)


def test_a_class_is_built_once_per_worker_and_closed(tmp_path: Path) -> None:
    ds = items(2000, partitions=20).map_batches(
        CountingModel, fn_constructor_args=(str(tmp_path),), fn_constructor_kwargs={"offset": 5},
        batch_size=25, workers=2,
    )  # fmt: skip
    out = ds.to_arrow()
    assert out.column("x").to_pylist() == list(range(2000))
    assert out.column("y").to_pylist() == [x + 5 for x in range(2000)]
    pids = set(out.column("pid").to_pylist())
    assert 1 <= len(pids) <= 2
    # 80 batches on 2 workers: the model was built once per worker that ran, never per batch
    assert count(tmp_path, "built") == len(pids)
    assert count(tmp_path, "closed") == len(pids), "close() runs when the stage's workers stop"


def test_a_class_on_threads_is_closed_when_the_run_ends(tmp_path: Path) -> None:
    ds = items(300).map_batches(CountingModel, fn_constructor_args=(str(tmp_path),), workers=2)
    assert ds.count(backend="threads") == 300
    built = count(tmp_path, "built")
    assert 1 <= built <= 2
    assert count(tmp_path, "closed") == built


def test_function_stages_run_on_workers_of_their_own_and_stream_in_order() -> None:
    ds = (
        items(1000, partitions=8)
        .map_batches(worker_pid, batch_size=50)  # fused into the reading tasks
        .map_batches(CountingModel, fn_constructor_args=("/dev/null/x",), workers=1)
    )
    with pytest.raises(StageError):  # the constructor cannot touch /dev/null/x
        ds.to_arrow(workers=2)
    ok = items(1000, partitions=8).map_batches(worker_pid, batch_size=50).map_batches(
        lambda b: b.append_column("stage", pa.array([__import__("os").getpid()] * b.num_rows)),
        workers=1, batch_size=100,
    )  # fmt: skip
    out = ok.to_arrow(workers=2)
    assert out.column("x").to_pylist() == list(range(1000))
    (stage_pid,) = set(out.column("stage").to_pylist())
    assert stage_pid not in set(out.column("reader").to_pylist())


def test_the_head_runs_in_the_caller_when_the_stages_hold_every_core() -> None:
    """A CPU stage whose workers take every core from the start: the read and the row-wise ops
    before it run on one thread in the caller (no process pool of their own competing with the
    stage for the cores); with a core to spare, on the run's worker processes as before."""
    import os

    from forkjoin.machine import usable_cpu_count

    cores = usable_cpu_count()
    full = items(200, partitions=4).map_batches(worker_pid, batch_size=50).map_batches(
        stage_pid, workers=1, resources={"cpu": cores}
    )
    out = full.to_arrow(workers=2)
    assert out.column("x").to_pylist() == list(range(200))
    assert set(out.column("reader").to_pylist()) == {os.getpid()}
    assert os.getpid() not in set(out.column("stage").to_pylist()), "the stage on its worker"
    if cores >= 2:
        spare = items(200, partitions=4).map_batches(worker_pid, batch_size=50)
        spare = spare.map_batches(stage_pid, workers=1)
        assert os.getpid() not in set(spare.to_arrow(workers=2).column("reader").to_pylist())


def test_per_stage_resources_pin_each_worker_to_its_gpu(two_gpus: None) -> None:
    ds = items(400, partitions=8).map_batches(
        WhereAmI, resources={"gpu": 1}, workers=2, batch_size=10
    )
    out = ds.to_arrow(workers=2)
    assert out.column("x").to_pylist() == list(range(400))
    where = set(out.column("where").to_pylist())
    assert where <= {"0|cuda:0", "1|cuda:0"}
    # the reading stage asked for no GPU: it is not pinned; the two GPU workers are
    by_pid = collections.defaultdict(set)
    for pid, w in zip(out.column("pid").to_pylist(), out.column("where").to_pylist(), strict=True):
        by_pid[pid].add(w)
    assert all(len(w) == 1 for w in by_pid.values()), "one worker, one GPU"


def test_fractional_gpus_share_a_gpu_and_too_many_workers_are_refused(two_gpus: None) -> None:
    ds = items(200, partitions=8).map_batches(
        WhereAmI, resources={"gpu": 0.5}, workers=4, batch_size=5
    )
    out = ds.to_arrow(workers=1)
    assert out.num_rows == 200
    with pytest.raises(fj.ResourceError, match="hold 2"):
        items(10).map_batches(WhereAmI, resources={"gpu": 1}, workers=3).to_arrow()


def test_a_gpu_stage_without_gpus_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FORKJOIN_GPUS", "")
    with pytest.raises(fj.ResourceError, match="no GPU"):
        items(10).map_batches(WhereAmI, resources={"gpu": 1}).to_arrow()


def _outstanding(log: Path) -> tuple[int, int]:
    """The most blocks that stage A had finished and stage B not yet started, and how many
    blocks B started in all."""
    finished_a = started_b = most = 0
    events = []
    for line in log.read_text().splitlines():
        stage, what, _first, when = line.split()
        events.append((float(when), stage, what))
    for _when, stage, what in sorted(events):
        if stage == "A" and what == "end":
            finished_a += 1
        elif stage == "B" and what == "start":
            started_b += 1
        most = max(most, finished_a - started_b)
    return most, started_b


def test_two_stage_pipeline_holds_a_bounded_number_of_blocks(tmp_path: Path) -> None:
    """A fast stage feeding a slow one: backpressure stops the fast one running ahead."""
    ds = (
        items(600, partitions=60)
        .map_batches(logged, fn_kwargs={"directory": str(tmp_path), "stage": "A"},
                     workers=1, batch_size=10)
        .map_batches(logged, fn_kwargs={"directory": str(tmp_path), "stage": "B",
                                        "delay": 0.05}, workers=1, batch_size=10)
    )  # fmt: skip
    assert ds.count(workers=1) == 600
    most, blocks = _outstanding(tmp_path / "log")
    assert blocks == 60
    # A's results waiting to be handed on, the channel, B's queued block: never all 60
    bound = pipeline.CHANNEL_BLOCKS + 2 * pipeline.ACTOR_IN_FLIGHT + 1
    assert most <= bound, f"{most} blocks held between the stages (bound {bound})"


def test_ordered_by_default_and_as_finished_with_ordered_false() -> None:
    ds = items(400, partitions=20).map_batches(slow_first, workers=2, batch_size=20)
    assert ds.to_arrow(workers=1).column("x").to_pylist() == list(range(400))
    start = time.monotonic()
    batches = list(ds.iter_batches(workers=1, ordered=False))
    firsts = [b.column("x")[0].as_py() for b in batches]
    assert sorted(x for b in batches for x in b.column("x").to_pylist()) == list(range(400))
    assert firsts[0] != 0 and 0 in firsts, "the slow block did not hold the others back"
    assert time.monotonic() - start < 30


def test_long_blocks_go_to_whichever_actor_is_free_even_before_earlier_output(
    tmp_path: Path,
) -> None:
    """Blocks that take seconds are not queued behind one another on an actor: each goes to the
    actor that is free, also while ordered output still waits for an earlier block. Here the
    first block finishes only after the 3 others: with a second block queued behind it on its
    actor (two blocks per actor, or an actor that stays "busy" until the blocks before its own
    are handed out) that would wait out the patience and the slow actor would compute it.
    (3 others: the finished blocks waiting behind the first stay within REORDER_FACTOR.)"""
    ds = items(40, partitions=4).map_batches(
        WaitsForTheOthers, fn_constructor_args=(str(tmp_path), 3, 0.3, 20.0), workers=2,
        batch_size=10,
    )  # fmt: skip
    start = time.monotonic()
    out = ds.to_arrow(workers=1)
    assert out.column("x").to_pylist() == list(range(40)), "order kept"
    pid_of = dict(zip(out.column("x").to_pylist(), out.column("pid").to_pylist(), strict=True))
    assert [x for x, pid in pid_of.items() if pid == pid_of[0]] == list(range(10)), (
        "the actor on the first block got no other block: the other actor was free"
    )
    assert time.monotonic() - start < 20


def test_a_stage_worker_that_dies_is_replaced_and_nothing_is_duplicated(tmp_path: Path) -> None:
    ds = items(1000, partitions=10).map_batches(
        DiesOnce, fn_constructor_args=(str(tmp_path), 555), workers=1, batch_size=50
    )
    out = ds.to_arrow(workers=1)
    assert (tmp_path / "killed").exists()
    assert sorted(out.column("x").to_pylist()) == list(range(1000))
    assert out.column("x").to_pylist() == list(range(1000))
    assert count(tmp_path, "built") == 2, "built again on the fresh worker"


def test_a_model_that_fails_to_load_names_the_stage_without_hanging() -> None:
    ds = items(1000, partitions=10).map_batches(
        BrokenModel, fn_constructor_args=("/nowhere/model.bin",), name="embed", workers=2
    )
    start = time.monotonic()
    with pytest.raises(StageError, match=r"map_batches\(embed\).*no model weights") as info:
        ds.to_arrow(workers=1)
    assert "BrokenModel" in str(info.value)
    assert time.monotonic() - start < 30


def test_stage_output_is_written_per_partition(tmp_path: Path) -> None:
    ds = items(500, partitions=5).map_batches(
        CountingModel, fn_constructor_args=(str(tmp_path),), workers=2, batch_size=40
    )
    out = tmp_path / "out"
    stats = ds.write_parquet(str(out), workers=1)
    assert stats.rows_out == 500 and stats.files_written == 5
    table = pq.read_table(out).sort_by("x")
    assert table.column("y").to_pylist() == [x + 1 for x in range(500)]


def test_a_stage_grows_from_min_to_max_while_it_is_the_bottleneck(tmp_path: Path) -> None:
    # 0.25 s a batch: clearly the bottleneck even when reading is slow on a busy machine
    ds = items(600, partitions=60).map_batches(
        CountingModel, fn_constructor_args=(str(tmp_path),), fn_constructor_kwargs={"delay": 0.25},
        workers=(1, 2), batch_size=10,
    )  # fmt: skip
    out = ds.to_arrow(workers=1)
    assert out.column("x").to_pylist() == list(range(600))
    assert count(tmp_path, "built") == 2
    assert len(set(out.column("pid").to_pylist())) == 2


def test_a_stage_that_keeps_up_does_not_grow(tmp_path: Path) -> None:
    """The other side of the growth rule: when reading is the bottleneck, blocks never wait
    for the stage, so its second worker (and a second model) is never started."""
    ds = (
        items(160, partitions=16)
        .map_batches(functools.partial(logged, directory=str(tmp_path), stage="read",
                                       delay=0.15))  # fmt: skip
        .map_batches(CountingModel, fn_constructor_args=(str(tmp_path),), workers=(1, 2),
                     batch_size=10)  # fmt: skip
    )
    out = ds.to_arrow(workers=1)  # one reader at 0.15 s a block: > GROW_AFTER_SECONDS in all
    assert out.column("x").to_pylist() == list(range(160))
    assert count(tmp_path, "built") == 1


def test_a_class_stage_is_built_while_upstream_still_reads(tmp_path: Path) -> None:
    """The stage's worker builds the model as it starts (stages.warm_up), not once the first
    block arrives: here reading takes 4 s, and the model is built before it ends."""
    ds = (
        items(20, partitions=1)
        .map_batches(functools.partial(logged, directory=str(tmp_path), stage="read", delay=4.0))
        .map_batches(LoggedModel, fn_constructor_args=(str(tmp_path),), workers=1)
    )
    assert ds.count(workers=1) == 20
    events = {" ".join(line.split()[:2]): float(line.split()[-1])
              for line in (tmp_path / "log").read_text().splitlines()}  # fmt: skip
    assert events["built -"] < events["read end"]


def test_bad_stage_arguments_are_refused_at_once() -> None:
    with pytest.raises(ValueError, match="min <= max"):
        items(3).map_batches(CountingModel, workers=(3, 1))
    with pytest.raises(TypeError, match="callable class"):
        items(3).map_batches(worker_pid, fn_constructor_args=(1,))
    with pytest.raises(fj.ResourceError):
        items(3).map_batches(worker_pid, resources={"tpu": 1})


@pytest.mark.cluster
@pytest.mark.parametrize("engine", ["ray", "dask"])
def test_class_stage_on_a_cluster_engine(engine: str, tmp_path: Path, request) -> None:  # type: ignore[no-untyped-def]
    request.getfixturevalue(f"{engine}_cluster")
    ds = items(600, partitions=12).map_batches(
        CountingModel, fn_constructor_args=(str(tmp_path),), workers=2, batch_size=25,
        resources={"cpu": 1},
    )  # fmt: skip
    out = ds.to_arrow(workers=2, backend=engine)
    assert out.column("y").to_pylist() == [x + 1 for x in range(600)]
    pids = set(out.column("pid").to_pylist())
    # the engine owns the processes: the model is built once per process that ran batches
    assert count(tmp_path, "built") == len(pids)
