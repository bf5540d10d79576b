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


def test_cpu_goals_are_paired_too():
    submit = Section("submit", "s", "tasks/s", True, "best", OFF)
    submit.rows = [
        Row(OFF, 100.0, [100.0, 50.0], extra={"caller_cpu_us_per_task": [10.0, 12.0]}),
        Row(ON, 99.0, [99.0, 49.0], extra={"caller_cpu_us_per_task": [10.1, 12.3]}),
    ]
    cpu = Section("cpu", "c", "s", False, "best", MAP_OFF)
    cpu.rows = [
        Row(MAP_OFF, 1.0, [1.0, 2.0], extra={"cpu_seconds": [2.0, 2.0]}),
        Row(MAP_ON, 1.0, [1.0, 2.0], extra={"cpu_seconds": [2.2, 2.2]}),
    ]
    goals = {goal.key: goal for goal in evaluate_goals({"submit": submit, "cpu": cpu})}
    assert round(goals["submit_cpu"].median, 4) == round((1.01 + 1.025) / 2, 4)
    assert goals["submit_cpu"].met  # under 1 / 0.98
    assert round(goals["cpu_cpu"].median, 3) == 1.1 and not goals["cpu_cpu"].met
