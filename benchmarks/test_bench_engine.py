"""Fast checks of the benchmark's own logic (no pools): ``pytest benchmarks``.

The clock and the console are injected, so turn-taking, goals and both table renderers are
checked without timing anything real.
"""

from __future__ import annotations

import io
import itertools
import json

import pytest
from _harness import QUICK, round_robin, timed
from _report import Goal, PlainConsole, Row, Section, render, to_json
from bench_engine import evaluate_goals, main


def fake_clock(step: float = 1.0):
    ticks = itertools.count()
    return lambda: next(ticks) * step


def test_round_robin_takes_turns_and_honours_repeats():
    order: list[str] = []
    cases = {name: timed(lambda name=name: order.append(name)) for name in "abc"}
    samples = round_robin(cases, {"a": 3, "b": 1, "c": 2}, fake_clock())
    assert order == ["a", "b", "c", "a", "c", "a"]
    assert [len(samples[name]) for name in "abc"] == [3, 1, 2]
    assert all(seconds == 1.0 for runs in samples.values() for seconds, _ in runs)


def section(key: str, reference: str, rows: list[Row], higher: bool = True) -> Section:
    statistic = "best" if higher else "median"
    return Section(key, key, "items/s" if higher else "ms", higher, statistic, reference, rows)


def sample_sections() -> dict[str, Section]:
    submit = section(
        "submit",
        "forkjoin Pool.submit",
        [
            Row("forkjoin Pool.submit", 30.0, [30.0, 20.0, 25.0]),
            Row("multiprocessing.Pool (fork).apply_async", 20.0, [20.0, 10.0, 15.0]),
        ],
    )
    cold = section(
        "cold", "forkjoin fj.map", [Row("forkjoin fj.map", 250.0, [240.0, 250, 260])], False
    )
    return {"submit": submit, "cold": cold}


def test_goals_are_judged_on_the_sections_statistic():
    goals = {goal.key: goal for goal in evaluate_goals(sample_sections())}
    submit, cold = goals["submit"], goals["cold"]
    assert submit.best == pytest.approx(1.5) and submit.median == pytest.approx(25 / 15)
    assert submit.met is True  # 1.5 >= 1.4 on best runs
    assert cold.best == 240.0 and cold.median == 250.0
    assert cold.met is False  # the median, 250 ms, is over 200 ms
    assert Goal("x", "x", 3.0, False, "%", "best", 3.0, 1.0, strict=True).met is False


def test_render_plain_and_rich_show_every_row_and_goal():
    sections = sample_sections()
    goals = evaluate_goals(sections)
    plain = io.StringIO()
    render(list(sections.values()), goals, PlainConsole(plain))
    rich_console = pytest.importorskip("rich.console")
    fancy = io.StringIO()
    render(list(sections.values()), goals, rich_console.Console(file=fancy, width=200))
    for text in (plain.getvalue(), fancy.getvalue()):
        assert "multiprocessing.Pool (fork).apply_async" in text
        assert "1.50x" in text  # forkjoin's advantage over the peer
        assert "NO (median)" in text and "yes (best)" in text
    data = to_json({}, list(sections.values()), goals)
    json.dumps(data)  # serializable as is
    assert data["sections"]["submit"]["rows"][1]["forkjoin_advantage"] == pytest.approx(1.5)


def test_main_runs_one_section_end_to_end(tmp_path):
    out = tmp_path / "r.json"
    console = PlainConsole(io.StringIO())
    code = main(["--quick", "--only", "eventlog", "--json", str(out), "--check"], console=console)
    assert code == 0  # no goal could be judged without the submit section, so none was missed
    data = json.loads(out.read_text())
    assert data["meta"]["settings"]["eventlog_loops"] == QUICK.eventlog_loops
    assert data["sections"]["eventlog"]["rows"][0]["value"] > 0
    assert "EventLog submit+finish" in console.file.getvalue()
