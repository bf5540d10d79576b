"""Checks of the data-plane benchmark: ``pytest benchmarks/test_bench_dataplane.py``.

Its logic (goals, the threshold verdict, tables) with made-up figures, and one ``--quick`` run
of the real thing in a subprocess, on forkjoin and whichever peers are installed (~40 s).
"""

from __future__ import annotations

import importlib.util
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
from _dataplane_threshold import analyse
from _report import PlainConsole, Row, Section, to_json
from bench_dataplane import evaluate_goals, parse_size, render

HERE = Path(__file__).resolve().parent
KiB, MiB, GiB = 2**10, 2**20, 2**30


def test_parse_size():
    assert parse_size("1GiB") == GiB
    assert parse_size("64MiB") == parse_size("64M") == 64 * MiB
    assert parse_size("1048576") == MiB


def test_threshold_verdict_is_the_smallest_size_from_which_shared_memory_keeps_winning():
    sizes = [16 * KiB, 64 * KiB, 256 * KiB, MiB]
    thresholds = [16 * KiB, 256 * KiB, 10**12]
    # shared memory loses at 16 KiB and 64 KiB, wins from 256 KiB on
    shm = {16 * KiB: 1000.0, 64 * KiB: 900.0, 256 * KiB: 800.0, MiB: 500.0}
    sock = {16 * KiB: 2000.0, 64 * KiB: 1000.0, 256 * KiB: 600.0, MiB: 200.0}
    best = {t: {s: (shm if t <= s else sock)[s] for s in sizes} for t in thresholds}
    verdict = analyse(sizes, thresholds, best)
    assert verdict["crossover_bytes"] == 256 * KiB
    assert verdict["per_size"][str(MiB)]["ratio"] == pytest.approx(2.5)
    assert verdict["per_size"][str(16 * KiB)]["socket"] == 2000.0  # median of 256 KiB and inf
    # a win at one size followed by a loss above it is no crossover there
    best[16 * KiB][MiB] = best[256 * KiB][MiB] = 100.0
    assert analyse(sizes, thresholds, best)["crossover_bytes"] is None


def sample_sections() -> dict[str, Section]:
    def rows(ours: str, peers: dict[str, float], value: float) -> list[Row]:
        out = [Row(ours, value, [value, value * 0.9], extra={"median": value * 0.95})]
        for name, v in peers.items():
            out.append(Row(name, v, [v, v], extra={"median": v, "peak_rss": GiB}))
        return out

    send = Section("send", "send", "GiB/s", True, "best", "forkjoin Pool.map_list")
    send.rows = rows("forkjoin Pool.map_list", {"joblib Parallel": 1.0, "Ray f.remote": 2.0}, 4.0)
    ret = Section("return", "return", "GiB/s", True, "best", "forkjoin Pool.imap")
    ret.rows = rows("forkjoin Pool.imap", {"Ray f.remote() + ray.get": 1.0}, 5.0)
    broadcast = Section(
        "broadcast", "broadcast", "s", False, "best", "forkjoin fj.shared", [],
        {"tasks": 64, "object_bytes": GiB},
    )  # fmt: skip
    ours = Row("forkjoin fj.shared", 1.0, [1.0], extra={"median": 1.0, "copies": 1.0})
    ours.extra["bytes_copied"] = [GiB + 500]
    ours.extra["copies_source"] = "pool.stats()"
    peer = Row("Ray ray.put", 2.0, [2.0], extra={"median": 2.0, "copies": 1, "peak_pss": GiB})
    broadcast.rows = [ours, peer]
    return {"send": send, "return": ret, "broadcast": broadcast}


def test_goals_pass_and_miss_and_tables_show_them():
    sections = sample_sections()
    goals = evaluate_goals(sections)
    by_text = {goal.text.split(" vs ")[-1]: goal for goal in goals}
    assert by_text["Ray f.remote"].best == pytest.approx(2.0)
    assert by_text["Ray f.remote"].met is False  # 2x < 3x
    assert by_text["joblib Parallel"].met is True  # 4x >= 2.5x
    assert by_text["Ray f.remote() + ray.get"].met is True  # 5x >= 4x
    copies = goals[-1]
    assert copies.key == "broadcast" and copies.met is True
    assert copies.best == pytest.approx(1.0, abs=1e-6)
    threshold = {
        "sizes": [64 * KiB, MiB],
        "thresholds": [64 * KiB, 10**12],
        "repeats": 2,
        "best": {str(64 * KiB): {str(64 * KiB): 10.0, str(MiB): 8.0}},
        "env_read_by_forkjoin": True,
        "failed_attempts": {str(64 * KiB): 1, str(10**12): 0},
        **analyse(
            [64 * KiB, MiB],
            [64 * KiB, 10**12],
            {64 * KiB: {64 * KiB: 10.0, MiB: 8.0}, 10**12: {64 * KiB: 20.0, MiB: 4.0}},
        ),
    }
    threshold["best"][str(10**12)] = {str(64 * KiB): 20.0, str(MiB): 4.0}
    texts = []
    plain = io.StringIO()
    render(list(sections.values()), goals, threshold, PlainConsole(plain), 256 * KiB)
    texts.append(plain.getvalue())
    rich_console = pytest.importorskip("rich.console")
    fancy = io.StringIO()
    console = rich_console.Console(file=fancy, width=250)
    render(list(sections.values()), goals, threshold, console, 256 * KiB)
    texts.append(fancy.getvalue())
    for text in texts:
        assert "PASS (best)" in text and "MISS (best)" in text
        assert "recommended OUT_OF_BAND_MIN_BYTES = 1MiB (now 256KiB)" in text
        assert "2.00x" in text  # forkjoin's advantage over Ray in send
        assert "64KiB: 1 failed attempt(s)" in text and "inf: 0 failed" not in text
    json.dumps(to_json({}, list(sections.values()), goals))


def installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def test_quick_run_end_to_end(tmp_path):
    """The real benchmark, --quick, in a fresh interpreter: exits 0, writes the expected JSON."""
    tools = ["forkjoin", "executor", "mp"]
    tools += [name for name in ("joblib", "ray") if installed(name)]
    out = tmp_path / "dataplane.json"
    done = subprocess.run(
        [sys.executable, str(HERE / "bench_dataplane.py"), "--quick", "--json", str(out),
         "--tools", ",".join(tools)],
        capture_output=True,
        text=True,
        timeout=100,  # ~40 s on 2 busy cores, Ray's start-up included
        cwd=HERE.parent,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    data = json.loads(out.read_text())
    assert data["meta"]["quick"] is True and data["meta"]["tools"] == tools
    assert set(data["sections"]) == {"send", "return", "broadcast"}
    for key in ("send", "return", "broadcast"):
        rows = data["sections"][key]["rows"]
        names = " ".join(row["name"] for row in rows)
        assert "forkjoin" in names and "ProcessPoolExecutor" in names
        assert ("Ray" in names) == ("ray" in tools)
        assert ("joblib" in names) == ("joblib" in tools)
        for row in rows:
            assert row["value"] > 0 and row["extra"]["peak_rss"] > 0
    shared = data["sections"]["broadcast"]["rows"][0]
    assert shared["name"].startswith("forkjoin fj.shared")
    assert shared["extra"]["copies"] == pytest.approx(1.0, abs=0.01)
    assert {goal["key"] for goal in data["goals"]} == {"send", "return", "broadcast"}
    threshold = data["threshold"]
    assert set(threshold["best"]) == {str(t) for t in threshold["thresholds"]}
    assert "crossover_bytes" in threshold and "per_size" in threshold
    assert "Goals (from the issue)" in done.stdout
