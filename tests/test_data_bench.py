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
    """Two sizes in one run (the issue's "flat from 2 M to 10 M rows"), Polars as the peer."""
    out = io.StringIO()
    path = tmp_path / "bench.json"
    argv = ["--rows", "3000,2000", "--only", "forkjoin,polars + Python UDF", "--workloads",
            "numeric,groupby", "--data", str(tmp_path), "--json", str(path)]  # fmt: skip
    assert bench_data.main(argv, console=PlainConsole(out)) == 0
    results = json.loads(path.read_text())
    assert set(results["sections"]) == {"numeric 2,000", "numeric 3,000", "groupby"}
    for key in ("numeric 2,000", "numeric 3,000"):
        rows = {row["name"]: row for row in results["sections"][key]["rows"]}
        # pandas serial always runs: the baseline every output is checked against
        assert set(rows) == {"forkjoin", "pandas serial", "polars + Python UDF"}
        for row in rows.values():
            assert row["extra"]["output_matches_pandas"] is True, (key, row)
            assert row["extra"]["peak_rss"] > 0
            # shared pages counted once: never more than the sum of the processes' RSS
            assert 0 < row["extra"]["peak_pss"] <= row["extra"]["peak_rss"] * 1.05
    goals = {goal["text"]: goal for goal in results["goals"]}
    assert goals["groupby-agg identical to pandas (1 = yes)"]["met"] is True
    assert goals["numeric 2,000: rows/s vs Polars (cold: a fresh pool)"]["measured"] > 0
    assert goals["numeric 3,000: forkjoin peak RSS / Polars'"]["measured"] > 0
    flat = goals["numeric: forkjoin peak RSS, largest size / smallest (flat)"]
    assert flat["measured"] > 0 and flat["target"] == bench_data.RSS_FLAT_GOAL
    assert "numeric workload" in out.getvalue()
