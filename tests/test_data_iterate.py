"""``Dataset.iter_batches`` (issue 18): formats, exact batch sizes, drop_last, a local shuffle
buffer, prefetching ahead of the consumer, errors and early exits."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch

import forkjoin as fj  # noqa: E402

pytestmark = pytest.mark.timeout(60)


def features(batch):  # type: ignore[no-untyped-def]
    x = batch.column("x").to_numpy()
    return {"x": x, "feat": [np.array([v, v * 2.0], dtype=np.float32) for v in x],
            "label": [f"n{v}" for v in x]}  # fmt: skip


def fails_late(batch):  # type: ignore[no-untyped-def]
    if 900 in batch.column("x").to_pylist():
        raise ValueError("bad row 900")
    return batch


@pytest.fixture
def ds() -> fj.data.Dataset:
    return fj.data.from_items([{"x": i} for i in range(1000)], partitions=7).map_batches(features)


@pytest.mark.parametrize("fmt", ["numpy", "torch", "pandas", "pyarrow"])
def test_formats_and_exact_batch_sizes(ds: fj.data.Dataset, fmt: str) -> None:
    batches = list(ds.iter_batches(batch_size=64, batch_format=fmt, workers=2, backend="threads"))
    sizes = [len(b["x"]) if fmt in ("numpy", "torch") else len(b) for b in batches]
    assert sizes == [64] * 15 + [40]
    first = batches[0]
    if fmt == "torch":
        assert isinstance(first["x"], torch.Tensor) and first["x"].dtype == torch.int64
        assert first["feat"].shape == (64, 2) and first["feat"].dtype == torch.float32
        assert first["label"][3] == "n3"  # strings stay an array of str
        assert torch.cat([b["x"] for b in batches]).tolist() == list(range(1000))
    elif fmt == "numpy":
        assert isinstance(first["x"], np.ndarray)
        assert np.concatenate([b["x"] for b in batches]).tolist() == list(range(1000))
    elif fmt == "pandas":
        assert list(first.columns) == ["x", "feat", "label"]
    else:
        assert isinstance(first, pa.Table)


def test_drop_last_and_whole_partitions(ds: fj.data.Dataset) -> None:
    batches = list(
        ds.iter_batches(batch_size=64, drop_last=True, batch_format="numpy", backend="threads")
    )
    assert [len(b["x"]) for b in batches] == [64] * 15
    whole = list(ds.iter_batches(workers=1, backend="threads"))
    assert sum(t.num_rows for t in whole) == 1000 and len(whole) == 7


def test_local_shuffle_buffer_mixes_rows_deterministically(ds: fj.data.Dataset) -> None:
    def run(seed: int) -> list[int]:
        batches = ds.iter_batches(
            batch_size=50,
            batch_format="numpy",
            local_shuffle_buffer=200,
            local_shuffle_seed=seed,
            workers=2,
            backend="threads",
        )
        return [int(v) for b in batches for v in b["x"]]

    once, again, other = run(1), run(1), run(2)
    assert sorted(once) == list(range(1000)), "every row exactly once"
    assert once != list(range(1000))
    assert once == again and once != other


def test_an_error_in_a_worker_reaches_the_consumer(ds: fj.data.Dataset) -> None:
    seen = 0
    with pytest.raises(ValueError, match="bad row 900"):
        for batch in ds.map_batches(fails_late).iter_batches(
            batch_size=100, workers=2, backend="threads"
        ):
            seen += batch.num_rows
    assert seen <= 900


def test_breaking_out_early_stops_the_producer(ds: fj.data.Dataset) -> None:
    iterator = ds.iter_batches(
        batch_size=10, batch_format="torch", prefetch=4, workers=2, backend="threads"
    )
    first = next(iterator)
    assert first["x"].tolist() == list(range(10))
    iterator.close()  # type: ignore[attr-defined]


def test_bad_arguments_are_refused() -> None:
    ds = fj.data.from_items([{"x": 1}])
    with pytest.raises(ValueError, match="batch_format"):
        ds.iter_batches(batch_format="jax")
    with pytest.raises(ValueError, match="batch_size"):
        ds.iter_batches(batch_size=0)
