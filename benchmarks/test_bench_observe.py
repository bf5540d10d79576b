"""Fast checks of bench_observe's own logic (no pools): ``pytest benchmarks``."""

from __future__ import annotations

from _report import Row, Section
from bench_observe import MAP_OFF, MAP_ON, OFF, ON, evaluate_goals


def test_goals_are_judged_on_paired_rounds():
    submit = Section("submit", "s", "tasks/s", True, "best", OFF)
    submit.rows = [Row(OFF, 100.0, [100.0, 50.0, 80.0]), Row(ON, 99.0, [99.0, 49.0, 70.0])]
    cpu = Section("cpu", "c", "s", False, "best", MAP_OFF)
    cpu.rows = [Row(MAP_OFF, 1.0, [1.0, 2.0, 1.5]), Row(MAP_ON, 1.2, [1.2, 2.02, 1.52])]
    dashboard, profile = evaluate_goals({"submit": submit, "cpu": cpu})
    assert dashboard.best == 0.99 and dashboard.median == 0.98 and dashboard.met
    # a noisy best run (1.2x) does not decide: the paired median (1.013x) does
    assert round(profile.best, 3) == 1.2 and round(profile.median, 3) == 1.013 and profile.met
