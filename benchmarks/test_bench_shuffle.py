"""bench_shuffle's checks and goals on made-up figures, and one tiny real run (forkjoin and
pandas on 20,000 rows): ``pytest benchmarks/test_bench_shuffle.py`` (~1 minute)."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import pytest

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_shuffle as bs  # noqa: E402
from _report import PlainConsole, Row, Section  # noqa: E402


def write(path: Path, values: list[float]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"l_extendedprice": values}), path)


def test_check_sort_finds_unsorted_files_overlaps_and_lost_rows(tmp_path):
    write(tmp_path / "a" / "p0.parquet", [1.0, 2.0])
    write(tmp_path / "a" / "p1.parquet", [3.0, 4.0])
    assert bs.check_sort(str(tmp_path / "a"), 4, 10.0) is None
    assert "rows" in bs.check_sort(str(tmp_path / "a"), 5, 10.0)
    write(tmp_path / "b" / "p0.parquet", [2.0, 1.0])
    assert "not sorted" in bs.check_sort(str(tmp_path / "b"), 2, 3.0)
    write(tmp_path / "c" / "p0.parquet", [1.0, 3.0])
    write(tmp_path / "c" / "p1.parquet", [2.0, 4.0])
    assert "overlap" in bs.check_sort(str(tmp_path / "c"), 4, 10.0)


def test_compare_tolerates_rounding_only():
    assert bs.compare({"a": 1.0, "b": [2.0, 3.0]}, {"a": 1.0 + 1e-9, "b": [2.0, 3.0]}) is None
    assert bs.compare({"a": 1.1}, {"a": 1.0}) is not None
    assert bs.compare({"a": 1.0}, {"a": 1.0, "b": 2.0}) is not None


def test_goals_compare_against_the_named_peers():
    section = Section("sort", "sort", "items/s", True, "best", bs.REFERENCE)
    section.rows = [
        Row(bs.REFERENCE, 100.0, [100.0], extra={"peak_rss": 50, "correct": True}),
        Row("Dask DataFrame", 40.0, [40.0], extra={"peak_rss": 80, "correct": True}),
        Row("Ray Data", 0.0, [], compared=False),
        Row("DuckDB", 200.0, [200.0], extra={"peak_rss": 100, "correct": True}),
        # forkjoin's own other row (backend="threads") is not a peer to beat on memory
        Row("forkjoin threads", 90.0, [90.0], extra={"peak_rss": 10, "correct": True}),
    ]
    goals = {g.text: g for g in bs.goals_of([section])}
    assert goals["sort: vs Dask DataFrame"].met is True  # 2.5x
    assert goals["sort: vs Ray Data"].measured is None  # failed peer: no ratio
    assert goals["sort: vs the faster of Polars and DuckDB (DuckDB)"].met is False  # 0.5x
    assert goals["sort: peak RSS / lowest peer's"].measured == 50 / 80


def test_run_measured_returns_the_json_line_and_peak_rss_or_the_error():
    from _harness import run_measured

    code = (
        "import json, time; x = b'x' * (50 << 20); time.sleep(0.5); "
        "print(json.dumps({'seconds': 1.5}))"
    )
    result = run_measured([sys.executable, "-c", code], timeout=60)
    assert result["seconds"] == 1.5 and result["peak_rss"] > 50 * 2**20
    failed = run_measured([sys.executable, "-c", "raise SystemExit('no luck')"], timeout=60)
    assert "no luck" in " ".join(failed["error"])


@pytest.mark.timeout(300)
def test_a_tiny_real_run(tmp_path):
    out = tmp_path / "r.json"
    code = bs.main(
        [
            "--rows",
            "20000",
            "--only",
            "forkjoin,forkjoin threads,pandas",
            "--data",
            str(tmp_path / "data"),
            "--json",
            str(out),
        ],
        console=PlainConsole(io.StringIO()),
    )
    assert code == 0
    sections = json.loads(out.read_text())["sections"]
    assert set(sections) == set(bs.WORKLOADS)
    for section in sections.values():
        for row in section["rows"]:
            assert row["value"] > 0 and row["extra"]["correct"], row
