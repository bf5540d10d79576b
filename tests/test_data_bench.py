"""benchmarks/bench_data.py runs end to end on a tiny dataset: contenders in fresh interpreters,
outputs checked against pandas, groupby equality, a table printed and JSON written."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import bench_data  # noqa: E402
from _report import PlainConsole  # noqa: E402

pytestmark = pytest.mark.timeout(120)


def test_bench_data_smoke(tmp_path):
    out = io.StringIO()
    path = tmp_path / "bench.json"
    argv = ["--rows", "3000", "--only", "forkjoin", "--workloads", "text,groupby",
            "--data", str(tmp_path / "data"), "--json", str(path)]  # fmt: skip
    assert bench_data.main(argv, console=PlainConsole(out)) == 0
    results = json.loads(path.read_text())
    rows = {row["name"]: row for row in results["sections"]["text"]["rows"]}
    assert set(rows) == {"forkjoin", "pandas serial"}  # pandas serial always runs: the baseline
    assert rows["forkjoin"]["extra"]["output_matches_pandas"] is True
    assert rows["forkjoin"]["extra"]["peak_rss"] > 0
    goals = {goal["text"]: goal for goal in results["goals"]}
    assert goals["groupby-agg identical to pandas (1 = yes)"]["met"] is True
    assert "text: rows/s vs pandas serial" in goals
    assert "text workload" in out.getvalue()
