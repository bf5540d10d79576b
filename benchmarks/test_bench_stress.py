"""A bounded end-to-end run of bench_stress.py's isolation rows (``pytest benchmarks``): both
fault sets on 10,000 tasks, forkjoin and the peers, checked in the JSON it writes. The sizes are
far below the issue's, so the slowdown goals are not judged here; losses are."""

from __future__ import annotations

import io
import json

import pytest
from _report import PlainConsole
from bench_stress import FAULT_SETS, main

pytestmark = pytest.mark.timeout(120)


def test_isolation_rows_end_to_end(tmp_path):
    out = tmp_path / "stress.json"
    console = PlainConsole(io.StringIO())
    main(["--only", "isolation", "--tasks", "10000", "--json", str(out)], console=console)
    data = json.loads(out.read_text())
    text = console.file.getvalue()
    for key, _rates, _kill_every, target in FAULT_SETS:
        section = data["sections"][f"isolation_{key}"]
        forkjoin, *peers = section["rows"][1:]
        (report,) = forkjoin["extra"]["reports"]
        assert report["ok"], report["examples"]
        assert report["lost"] == report["duplicated"] == report["wrong"] == 0
        assert report["engine_tasks"] > report["fault_free_engine_tasks"]  # faults cost tasks
        goals = {goal["key"]: goal for goal in data["goals"]}
        assert goals[f"zero_loss_{key}"]["met"] is True
        assert goals[f"slowdown_{key}"]["target"] == target
        # every injected set has items that kill their worker: neither peer survives one
        assert [peer["name"] for peer in peers] == [
            "concurrent.futures.ProcessPoolExecutor, same faults",
            "joblib (loky), same faults",
        ]
        for peer in peers:
            result = peer["extra"]
            assert result["stopped"] and result["lost"] > 0 and result["leftovers"] == 0
            assert result["done"] + result["lost"] == 10_000
            assert result["error"].startswith(("BrokenProcessPool", "TerminatedWorkerError"))
    assert "STOPPED after" in text and "engine tasks" in text
