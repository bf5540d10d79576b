"""forkjoin.data on the cluster engines: the same pipeline gives the same Parquet output and the
same aggregates on Ray, Dask and Spark as on local processes (issues 5 and 19)."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import forkjoin as fj

pytestmark = pytest.mark.timeout(180)


def add_score(batch):  # type: ignore[no-untyped-def]
    values = batch.column("x").to_pylist()
    return batch.append_column("score", pa.array([v * v % 7 for v in values]))


def is_even(row) -> bool:  # type: ignore[no-untyped-def]
    return row["x"] % 2 == 0


@pytest.fixture(scope="module")
def source(tmp_path_factory):  # type: ignore[no-untyped-def]
    folder = tmp_path_factory.mktemp("source")
    for part in range(3):
        rows = range(part * 400, (part + 1) * 400)
        table = pa.table({"x": list(rows), "k": [r % 5 for r in rows]})
        pq.write_table(table, folder / f"part-{part}.parquet", row_group_size=100)
    return folder


def pipeline(source):  # type: ignore[no-untyped-def]
    return fj.data.read_parquet(str(source)).filter(is_even).map_batches(add_score)


@pytest.mark.parametrize("engine", ["ray", "dask", "spark"])
def test_pipeline_on_a_cluster_engine_matches_local_processes(engine, source, tmp_path, request):
    request.getfixturevalue(f"{engine}_cluster")
    local = pipeline(source).to_pandas(workers=2, backend="process")
    remote = pipeline(source).to_pandas(workers=2, backend=engine)
    assert remote.to_dict("list") == local.to_dict("list")

    out = tmp_path / "out"
    pipeline(source).write_parquet(str(out), workers=2, backend=engine)
    written = pq.read_table(out).to_pandas().sort_values("x").reset_index(drop=True)
    assert written.to_dict("list") == local.sort_values("x").reset_index(drop=True).to_dict("list")
    manifest = json.loads((out / "_manifest.json").read_text())
    assert sum(f["rows"] for f in manifest["files"]) == len(local)

    sums = pipeline(source).groupby("k").agg({"score": "sum"}).to_pandas(workers=2, backend=engine)
    expected = local.groupby("k")["score"].sum()
    assert dict(zip(sums["k"], sums["score"], strict=True)) == expected.to_dict()
