"""benchmarks/bench_sklearn.py runs end to end on tiny data: each contender in a fresh
interpreter, scikit-learn's results checked equal to n_jobs=1's, a table printed and JSON
written."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import pytest
import sklearn  # noqa: F401  (the test extra installs it)

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import bench_sklearn  # noqa: E402
from _report import PlainConsole  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]


def test_bench_sklearn_smoke(tmp_path):
    out = io.StringIO()
    path = tmp_path / "bench.json"
    argv = ["--quick", "--rounds", "1", "--calls", "2", "--only", "gridsearch",
            "--contenders", "forkjoin", "--json", str(path)]  # fmt: skip
    assert bench_sklearn.main(argv, console=PlainConsole(out)) in (0, 1)  # 1: a goal missed
    results = json.loads(path.read_text())
    assert set(results["sections"]) == {"gridsearch", "gridsearch-warm"}
    rows = {row["name"]: row for row in results["sections"]["gridsearch"]["rows"]}
    assert set(rows) == {"forkjoin", "n_jobs=1"}  # the serial baseline always runs
    assert all(row["detail"] == "matches n_jobs=1" for row in rows.values())
    assert all(len(row["runs"]) == 1 and row["value"] > 0 for row in rows.values())
    goals = {goal["text"]: goal for goal in results["goals"]}
    assert goals["gridsearch: results equal n_jobs=1 (1 = yes)"]["met"] is True
    assert "gridsearch: first call, fresh interpreter" in out.getvalue()
