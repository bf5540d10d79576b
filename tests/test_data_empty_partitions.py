"""A filter that empties some partitions before a map_batches that adds a column: the sink writes
those partitions as files without rows and with the columns from before the map_batches. Reading
the output back must give the rows, with the map_batches' schema (found by the docs' example)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import forkjoin as fj  # noqa: E402
import forkjoin.data as fd  # noqa: E402

pytestmark = pytest.mark.timeout(60)


def with_length(batch: pd.DataFrame) -> pd.DataFrame:
    return batch.assign(length=batch["text"].str.len())


def test_output_with_emptied_partitions_reads_back(tmp_path: Path) -> None:
    source = tmp_path / "in"
    source.mkdir()
    for part in range(3):  # the middle file's rows are all filtered out
        lines = [{"id": part * 10 + i, "text": "" if part == 1 else "x" * (i + 1)}
                 for i in range(10)]  # fmt: skip
        (source / f"part-{part}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    out = tmp_path / "out"
    (
        fd.read_json(str(source))
        .filter(lambda row: row["text"] != "")
        .map_batches(with_length, batch_format="pandas")
        .write_parquet(str(out), workers=2)
    )
    schemas = {tuple(pq.read_schema(p).names) for p in out.glob("*.parquet")}
    assert len(schemas) > 1, "the sink still writes an emptied partition with the old columns"
    back = fd.read_parquet(str(out)).to_pandas(workers=1).sort_values("id")
    assert back["id"].tolist() == [*range(10), *range(20, 30)]
    assert back["length"].tolist() == [i + 1 for i in range(10)] * 2


def test_a_file_with_rows_and_another_schema_is_still_an_error(tmp_path: Path) -> None:
    pq.write_table(pa.table({"a": [1, 2]}), tmp_path / "one.parquet")
    pq.write_table(pa.table({"b": ["x"]}), tmp_path / "two.parquet")
    with pytest.raises(fj.DataError, match="schema differs"):
        fd.read_parquet(str(tmp_path)).count(workers=1)
    empty_first = tmp_path / "empty"
    empty_first.mkdir()
    pq.write_table(pa.table({"b": pa.array([], pa.string())}), empty_first / "a.parquet")
    pq.write_table(pa.table({"a": [1, 2]}), empty_first / "b.parquet")
    assert fd.read_parquet(str(empty_first)).to_pandas(workers=1)["a"].tolist() == [1, 2]
