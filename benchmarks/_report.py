"""The benchmark's results (rows, sections, goals) and how they are shown: tables and JSON.

The console is injected (rich's ``Console(file=StringIO())`` in a test), and ``rich`` is
optional: without it the same tables print as plain aligned text.
"""

from __future__ import annotations

import sys
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class Row:
    """One contender's figure in one section."""

    name: str
    value: float  # the headline figure, in the section's unit (best or median of ``runs``)
    runs: list[float]  # the same figure, run by run, in the order measured
    detail: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    compared: bool = True  # False: the "forkjoin advantage" over this row means nothing


@dataclass
class Section:
    key: str
    title: str
    unit: str  # "tasks/s", "items/s", "busy", "ms", "us"
    higher_is_better: bool
    statistic: str  # "best" or "median"
    reference: str  # the forkjoin row the "forkjoin advantage" column compares against
    rows: list[Row] = field(default_factory=list)
    params: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def row(self, name: str) -> Row:
        for row in self.rows:
            if row.name == name:
                return row
        raise KeyError(f"no row {name!r} in section {self.key!r}")

    def advantage(self, row: Row) -> float | None:
        """How many times better forkjoin's reference row is than ``row`` (>1: forkjoin ahead)."""
        ref = self.row(self.reference).value
        if not row.compared or not ref or not row.value:
            return None
        return ref / row.value if self.higher_is_better else row.value / ref


@dataclass
class Goal:
    """One goal from the issue, judged on the section's statistic; the other one is shown too."""

    key: str
    text: str
    target: float
    at_least: bool  # True: measured >= target; False: measured <= target (< if strict)
    unit: str  # "x", "ms", "%" or "" (a fraction)
    statistic: str  # which of best / median judges the goal: the section's statistic
    best: float | None
    median: float | None
    strict: bool = False

    @property
    def measured(self) -> float | None:
        return self.best if self.statistic == "best" else self.median

    @property
    def met(self) -> bool | None:
        value = self.measured
        if value is None:
            return None
        if self.at_least:
            return value >= self.target
        return value < self.target if self.strict else value <= self.target


# -- output --------------------------------------------------------------------------------------


def format_value(value: float, unit: str) -> str:
    if unit in ("tasks/s", "items/s"):
        return f"{value:,.0f}"
    if unit == "busy":
        return f"{value:.3f}"
    if unit == "ms":
        return f"{value:.1f}" if value >= 10 else f"{value:.2f}"
    if unit == "us":
        return f"{value:.2f}"
    return f"{value:g}"


def format_goal(goal: Goal) -> list[str]:
    op = ">=" if goal.at_least else ("<" if goal.strict else "<=")

    def show(value: float | None) -> str:
        if value is None:
            return "n/a"
        return f"{value:.3f}" if goal.unit == "" else f"{value:.2f}{goal.unit}"

    met = {True: "yes", False: "NO", None: "n/a"}[goal.met]
    return [
        goal.text,
        f"{op} {goal.target:g}{goal.unit}",
        show(goal.best),
        show(goal.median),
        f"{met} ({goal.statistic})",
    ]


class PlainConsole:
    """Enough of rich's Console for the tables below, when rich is not installed."""

    def __init__(self, file: Any = None) -> None:
        self.file = file or sys.stdout

    def print(self, *objects: Any, **_: Any) -> None:
        print(*objects, file=self.file, flush=True)


def make_console(file: Any = None) -> Any:
    try:
        from rich.console import Console
    except ImportError:
        return PlainConsole(file)
    stream = file or sys.stdout
    width = None if getattr(stream, "isatty", lambda: False)() else 140
    return Console(file=file, width=width)


def plain_table(title: str, headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    lines = [title, "  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(lines)


def footer(meta: dict[str, Any], load: Any, path: Any) -> str:
    """The last line of a run: its duration, the machine's load around it, where results went."""
    loads = (
        ""
        if not load
        else f"; load average {load[0]:.2f} at start, {meta['loadavg_end'][0]:.2f} at end"
    )
    return f"{meta['seconds_total']:.0f} s{loads}; results in {path}"


def publish(
    meta: dict[str, Any], sections: list[Section], goals: list[Goal], console: Any, path: Any,
    check: bool,
) -> int:  # fmt: skip
    """End a benchmark run: the tables, the JSON at ``path``, the footer line; the exit status
    (1 when ``check`` and a goal was missed)."""
    import json

    render(sections, goals, console)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(to_json(meta, sections, goals), indent=2) + "\n")
    console.print(footer(meta, meta.get("loadavg_start"), path))
    return 1 if check and any(goal.met is False for goal in goals) else 0


def render(sections: list[Section], goals: list[Goal], console: Any) -> None:
    """The tables, one per section, then the goals; rich if the console is rich's."""

    def emit(title: str, headers: list[str], rows: list[list[str]], right: set[int]) -> None:
        if isinstance(console, PlainConsole):
            console.print(plain_table(title, headers, rows) + "\n")
            return
        from rich.table import Table  # a console that is not plain is rich's

        table = Table(title=title, title_justify="left")
        for i, header in enumerate(headers):
            table.add_column(header, justify="right" if i in right else "left")
        for row in rows:
            table.add_row(*row)
        console.print(table)

    console.print(
        "forkjoin adv. = how many times better forkjoin's row for that figure (the 1.00x row) is "
        "than the row shown: >1 forkjoin ahead, <1 behind"
    )
    for section in sections:
        stat = "median" if section.statistic == "median" else "best"
        rows = []
        for row in section.rows:
            adv = section.advantage(row)
            rows.append(
                [
                    row.name,
                    format_value(row.value, section.unit),
                    "-" if adv is None else f"{adv:.2f}x",
                    row.detail,
                ]
            )
        headers = ["contender", f"{section.unit} ({stat})", "forkjoin adv.", "detail"]
        emit(section.title, headers, rows, {1, 2})
        for note in section.notes:
            console.print(f"  note: {note}")
    emit(
        "Goals (from the issue), judged on the statistic in brackets",
        ["goal", "target", "best runs", "median runs", "met"],
        [format_goal(goal) for goal in goals],
        {1, 2, 3},
    )


def to_json(meta: dict[str, Any], sections: list[Section], goals: list[Goal]) -> dict[str, Any]:
    out_sections = {}
    for section in sections:
        data = asdict(section)
        for row_data, row in zip(data["rows"], section.rows, strict=True):
            row_data["forkjoin_advantage"] = section.advantage(row)
        out_sections[section.key] = data
    return {
        "meta": meta,
        "sections": out_sections,
        "goals": [{**asdict(goal), "measured": goal.measured, "met": goal.met} for goal in goals],
    }
