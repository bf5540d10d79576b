"""Checks of bench_cluster's logic, and one small real run on Dask: ``pytest benchmarks``.

The goal arithmetic is checked on made-up rows (a fake clock needs no engine); the end-to-end
run starts a real 2-worker Dask LocalCluster with tiny sizes (~15-30 s) and checks that native
code and forkjoin both ran on it and returned the right results.
"""

from __future__ import annotations

import io
import json

import pytest
from _cluster_sections import CLUSTER_QUICK, ClusterSettings
from _cluster_workloads import apply_chunk, apply_chunk_boxed, flatten, split
from _report import PlainConsole, Row, Section
from _workloads import identity
from bench_cluster import evaluate_goals, main


def test_split_and_flatten_cut_chunks_as_forkjoin_does():
    items = list(range(10))
    chunks = split(items, 4)
    assert chunks == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert flatten(chunks) == items
    assert apply_chunk(identity, chunks[0]) == chunks[0]
    assert apply_chunk_boxed(identity, chunks[2]) == ([8, 9],)


def rates_section(key: str, reference: str, rows: dict[str, list[float]]) -> Section:
    section = Section(key, key, "items/s", True, "best", reference, params={"items": 1000})
    section.rows = [
        Row(name, max(runs), runs, extra={"busy": [r / 100 for r in runs]})
        for name, runs in rows.items()
    ]
    return section


def test_goals_are_time_ratios_for_chunked_maps_and_speedups_for_tiny_tasks():
    cpu = rates_section(
        "cpu-ray",
        "forkjoin fj.map(backend='ray', chunksize=4)",
        {
            "forkjoin fj.map(backend='ray', chunksize=4)": [40.0, 50.0, 30.0],
            "native Ray: ray.get(...), chunksize=4": [52.0, 45.0, 40.0],
        },
    )
    mapped = rates_section(
        "map-dask",
        "forkjoin fj.map(backend='dask', chunksize='auto')",
        {
            "forkjoin fj.map(backend='dask', chunksize='auto')": [100.0, 80.0, 90.0],
            "forkjoin fj.map(chunksize=500)": [200.0, 190.0, 195.0],
            "native Dask: ... (best chunksize)": [210.0, 200.0, 190.0],
        },
    )
    tiny = rates_section(
        "tiny-ray",
        "forkjoin fj.map(backend='ray', chunksize='auto')",
        {
            "forkjoin fj.map(backend='ray', chunksize='auto')": [3000.0, 2000.0],
            "native Ray: ray.get([f.remote(x) for x in items])": [1000.0, 500.0],
        },
    )
    goals = evaluate_goals({s.key: s for s in (cpu, mapped, tiny)})
    keys = ["cpu-ray", "cpu-ray", "map-dask", "map-dask", "tiny-ray"]
    assert [goal.key for goal in goals] == keys
    cpu_goal, busy_goal, same_goal, auto_goal, tiny_goal = goals
    assert busy_goal.best == pytest.approx(0.52 / 0.50) and "busy" in busy_goal.text
    # time ratio = native's best rate / forkjoin's best rate: 52/50 = 1.04 <= 1.05
    assert cpu_goal.best == pytest.approx(52 / 50) and cpu_goal.met is True
    assert cpu_goal.median == pytest.approx(45 / 40)
    assert same_goal.best == pytest.approx(210 / 200) and same_goal.met is True
    assert auto_goal.best == pytest.approx(2.1) and auto_goal.met is False
    assert "1,000-item map" in auto_goal.text
    assert tiny_goal.best == pytest.approx(3.0) and tiny_goal.met is True
    assert tiny_goal.median == pytest.approx(2500 / 750)


def test_unknown_engine_is_a_usage_error(tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        main(["--engines", "spark", "--json", str(tmp_path / "r.json")], console=PlainConsole())
    assert exit_info.value.code == 2


TINY = ClusterSettings(
    cpu_items=4,
    cpu_item_seconds=0.005,
    cpu_chunksize=2,
    cpu_repeats=1,
    map_items=2_000,
    map_chunksizes=(500, 1_000),
    map_repeats=1,
    tiny_items=60,
    tiny_repeats=1,
    tiny_native_repeats=1,
    warmup_tasks=10,
)


@pytest.mark.timeout(120)
def test_main_runs_dask_end_to_end(tmp_path):
    pytest.importorskip("distributed")
    out = tmp_path / "r.json"
    console = PlainConsole(io.StringIO())
    argv = ["--engines", "dask", "--only", "cpu,map,tiny", "--json", str(out), "--check"]
    code = main(argv, console=console, settings=TINY)
    data = json.loads(out.read_text())
    assert set(data["sections"]) == {"cpu-dask", "map-dask", "tiny-dask"}
    assert data["meta"]["settings"]["map_items"] == TINY.map_items != CLUSTER_QUICK.map_items
    assert "dask" in data["meta"]["versions"]
    for section in data["sections"].values():
        assert len(section["rows"]) >= 2
        assert all(row["value"] > 0 for row in section["rows"])
    assert len(data["goals"]) == 5 and all(goal["best"] > 0 for goal in data["goals"])
    missed = [goal for goal in data["goals"] if goal["met"] is False]
    assert code == (1 if missed else 0)  # --check: exit status 1 exactly when a goal is missed
    assert "native Dask: client.gather(client.map(f, items))" in console.file.getvalue()
