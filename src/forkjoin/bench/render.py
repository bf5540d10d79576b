"""Showing a scaling report or a run's breakdown: rich table, JSON dict, PNG plots, HTML.

Plots are matplotlib figures of ``PLOT_SIZE`` inches at ``PLOT_DPI`` (800 x 500 pixels), with
labelled axes, units and a legend; the HTML report embeds them as base64 PNGs, so the file is
self-contained (no network, no scripts).
"""

from __future__ import annotations

import base64
import html
import io
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .breakdown import PHASES, Breakdown

if TYPE_CHECKING:
    from .scaling import ScalingReport

PLOT_SIZE = (8.0, 5.0)
PLOT_DPI = 100
PHASE_COLOURS = {
    "startup": "#9467bd",
    "serialisation": "#ff7f0e",
    "transfer": "#17becf",
    "queue_wait": "#bcbd22",
    "compute": "#2ca02c",
    "merge": "#8c564b",
    "caller": "#7f7f7f",
    "idle": "#dddddd",
}


# -- numbers -------------------------------------------------------------------------------------


def report_dict(report: ScalingReport) -> dict[str, Any]:
    model = report.model
    fit = model.amdahl
    return {
        "function": report.function,
        "backend": report.backend,
        "items": report.items,
        "workers": report.workers,
        "repeats": report.repeats,
        "serial_seconds": model.serial_seconds,
        "serial_times": report.serial_times,
        "points": [
            {
                "workers": p.workers, "seconds": p.seconds, "times": p.times,
                "speedup": p.speedup, "efficiency": p.efficiency,
                "karp_flatt": p.karp_flatt, "gustafson": p.gustafson,
            }
            for p in model.points
        ],  # fmt: skip
        "amdahl": None
        if fit is None
        else {
            "serial_fraction": fit.serial_fraction,
            "ci95": [fit.ci_low, fit.ci_high],
            "serial_seconds": fit.serial_seconds,
            "parallel_seconds": fit.parallel_seconds,
            "r_squared": fit.r_squared,
            "max_speedup": None if math.isinf(fit.max_speedup()) else fit.max_speedup(),
        },
        "predicted_speedup": {str(k): v for k, v in model.predictions.items()},
        "startup_seconds": {str(k): v for k, v in report.startup_seconds.items()},
        "serialisation_seconds_per_item": report.serialisation_seconds_per_item,
        "results_match": report.results_match,
        "breakdown": {str(p): b.as_dict() for p, b in report.breakdowns.items()},
        "advice": report.advice,
    }


# -- terminal ------------------------------------------------------------------------------------


class _PlainTable:
    """Enough of rich's Table for these reports when rich is not installed."""

    def __init__(self, title: str = "") -> None:
        self.title = title
        self.headers: list[str] = []
        self.rows: list[list[str]] = []

    def add_column(self, header: str, **_: Any) -> None:
        self.headers.append(header)

    def add_row(self, *cells: str) -> None:
        self.rows.append(list(cells))

    def __str__(self) -> str:
        widths = [
            max([len(h)] + [len(r[i]) for r in self.rows]) for i, h in enumerate(self.headers)
        ]
        header = "  ".join(h.rjust(w) for h, w in zip(self.headers, widths, strict=True))
        lines = [self.title, header]
        lines += ["  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in self.rows]
        return "\n".join(lines)


class _PlainConsole:
    def __init__(self, file: io.StringIO) -> None:
        self.file = file

    def print(self, obj: Any) -> None:
        print(str(obj), file=self.file)


def _table_class() -> Any:
    try:
        from rich.table import Table
    except ImportError:  # rich is the "progress" extra: plain text without it
        return _PlainTable
    return Table


def _console(width: int) -> tuple[Any, io.StringIO]:
    buffer = io.StringIO()
    try:
        from rich.console import Console
    except ImportError:
        return _PlainConsole(buffer), buffer
    return Console(file=buffer, width=width, force_terminal=False, color_system=None), buffer


def render_table(report: ScalingReport, width: int = 100) -> str:
    """The report as text tables (rich, or plain text without it), for a terminal or a log."""
    Table = _table_class()  # noqa: N806

    console, buffer = _console(width)
    model = report.model
    title = (
        f"scaling of {report.function} on {report.items} items, backend={report.backend}, "
        f"serial {model.serial_seconds:.3f} s"
    )
    table = Table(title=title)
    for column in ("workers", "time (s)", "speedup", "efficiency", "Karp-Flatt", "Gustafson"):
        table.add_column(column, justify="right")
    for p in model.points:
        table.add_row(
            str(p.workers),
            f"{p.seconds:.3f}",
            f"{p.speedup:.2f}x",
            f"{100 * p.efficiency:.0f}%",
            "-" if p.karp_flatt is None else f"{p.karp_flatt:.3f}",
            "-" if p.gustafson is None else f"{p.gustafson:.2f}x",
        )
    console.print(table)
    fit = model.amdahl
    if fit is not None:
        console.print(
            f"Amdahl fit: serial fraction {fit.serial_fraction:.3f} "
            f"(95% CI {fit.ci_low:.3f}-{fit.ci_high:.3f}, R^2 {fit.r_squared:.3f}); "
            "predicted speedup "
            + ", ".join(f"{k} workers {v:.2f}x" for k, v in model.predictions.items())
        )
    phases = Table(title="where the time went in the median run (seconds of wall time per worker)")
    phases.add_column("workers", justify="right")
    phases.add_column("run (s)", justify="right")
    for name in PHASES:
        phases.add_column(name, justify="right")
    phases.add_column("total / wall", justify="right")
    for count, brk in sorted(report.breakdowns.items()):
        wall = brk.measured_seconds or brk.wall_seconds
        phases.add_row(
            str(count),
            f"{wall:.3f}",
            *[f"{brk.phases[name]:.3f}" for name in PHASES],
            f"{brk.total / wall:.3f}" if wall > 0 else "-",
        )
    console.print(phases)
    if report.advice:
        console.print("Recommendations:")
        for line in report.advice:
            console.print(f" - {line}")
    return buffer.getvalue()


def render_breakdown_text(brk: Breakdown, advice: list[str], width: int = 100) -> str:
    Table = _table_class()  # noqa: N806

    console, buffer = _console(width)
    title = f"run of {brk.tasks} tasks on {brk.lanes} workers, {brk.wall_seconds:.3f} s"
    table = Table(title=title)
    table.add_column("phase")
    table.add_column("seconds", justify="right")
    table.add_column("share", justify="right")
    for name in PHASES:
        table.add_row(name, f"{brk.phases[name]:.4f}", f"{100 * brk.share(name):.1f}%")
    console.print(table)
    for line in advice:
        console.print(f" - {line}")
    return buffer.getvalue()


# -- plots ---------------------------------------------------------------------------------------


def _figure() -> tuple[Any, Any]:
    try:
        import matplotlib
    except ImportError as exc:
        from ..errors import BackendUnavailableError

        raise BackendUnavailableError(
            f'plots need matplotlib ({exc}); pip install "forkjoin[plot]"'
        ) from exc

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=PLOT_SIZE, dpi=PLOT_DPI)
    return fig, ax


def _save(fig: Any, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=PLOT_DPI, format="png")
    plt.close(fig)
    return path


def plot_speedup(report: ScalingReport, path: Path) -> Path:
    fig, ax = _figure()
    pts = report.model.points
    xs = [p.workers for p in pts]
    top = max(xs) * 4  # the fit, a little past what was measured
    grid = [1 + (top - 1) * i / 100 for i in range(101)]
    fit = report.model.amdahl
    ceiling = max([p.speedup for p in pts] + [1.0])
    if fit is not None:
        serial = report.model.serial_seconds or fit.predicted_time(1)
        ceiling = max(ceiling, serial / fit.predicted_time(top))
    ideal = [x for x in grid if x <= ceiling * 1.5] or grid[:2]
    ax.plot(ideal, ideal, "--", color="#888888", label="ideal (linear)")
    ax.plot(xs, [p.speedup for p in pts], "o-", color="#1f77b4", label="measured (median)")
    for p in pts:  # every repeat, to show the spread
        serial = report.model.serial_seconds
        ax.scatter([p.workers] * len(p.times), [serial / t for t in p.times if t > 0],
                   s=10, color="#1f77b4", alpha=0.35)  # fmt: skip
    if fit is not None:
        ax.plot(grid, [serial / fit.predicted_time(x) for x in grid], "-", color="#d62728",
                label=f"Amdahl fit (fastest repeats), serial fraction {fit.serial_fraction:.2f} "
                      f"[{fit.ci_low:.2f}, {fit.ci_high:.2f}]")  # fmt: skip
    ax.set_xlabel("workers (count)")
    ax.set_ylabel("speedup over serial (x)")
    ax.set_title(f"Speedup: {report.function}")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper left")
    return _save(fig, path)


def plot_efficiency(report: ScalingReport, path: Path) -> Path:
    fig, ax = _figure()
    pts = report.model.points
    xs = [p.workers for p in pts]
    ax.axhline(100, linestyle="--", color="#888888", label="ideal (100%)")
    ax.plot(xs, [100 * p.efficiency for p in pts], "o-", color="#2ca02c", label="efficiency")
    kf = [(p.workers, p.karp_flatt) for p in pts if p.karp_flatt is not None]
    if kf:
        ax.plot([w for w, _ in kf], [100 * (v or 0.0) for _, v in kf], "s--", color="#9467bd",
                label="Karp-Flatt serial fraction")  # fmt: skip
    ax.set_xlabel("workers (count)")
    ax.set_ylabel("percent (%)")
    ax.set_ylim(bottom=0)
    ax.set_title("Parallel efficiency (speedup / workers)")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best")
    return _save(fig, path)


def plot_timeline(brk: Breakdown, path: Path, title: str = "Per-worker timeline") -> Path:
    """Gantt chart: one row per worker lane, tasks coloured by phase, failures marked."""
    from matplotlib.patches import Patch

    fig, ax = _figure()
    t0 = brk.t0
    spans = brk.spans
    height = 0.8
    for phase, start_of, end_of in (
        ("queue_wait", lambda s: s.submit, lambda s: s.start),
        ("compute", lambda s: s.start, lambda s: s.end),
        ("transfer", lambda s: s.end, lambda s: s.merge),
    ):
        by_lane: dict[int, list[tuple[float, float]]] = {}
        for s in spans:
            a, b = start_of(s), end_of(s)
            if b > a:
                by_lane.setdefault(s.lane, []).append((a - t0, b - a))
        for lane, bars in by_lane.items():
            h = height if phase == "compute" else height * 0.35
            y = lane - h / 2
            ax.broken_barh(bars, (y, h), facecolors=PHASE_COLOURS[phase], linewidth=0)
    for lane, start, end in brk.startup_spans:
        ax.broken_barh([(start - t0, end - start)], (lane - height / 2, height),
                       facecolors=PHASE_COLOURS["startup"], linewidth=0)  # fmt: skip
    for start, end in brk.caller_intervals:
        ax.axvspan(start - t0, end - t0, color=PHASE_COLOURS["caller"], alpha=0.3, linewidth=0)
    for lane in range(brk.lanes):
        ax.axhline(lane, color="#eeeeee", linewidth=0.5, zorder=0)
    failed = [s for s in spans if s.status != 0]
    if failed:
        ax.scatter([s.end - t0 for s in failed], [s.lane for s in failed], marker="x",
                   color="#d62728", s=60, zorder=5, label="failed / crashed task")  # fmt: skip
    for when, event, _worker, _pid in brk.worker_events:
        if event == "exit" and 0 <= when <= brk.wall_seconds:
            ax.axvline(when, color="#d62728", linestyle=":", linewidth=1)
    shown = ["queue_wait", "compute", "transfer"]
    shown += ["startup"] if brk.startup_spans else []
    shown += ["caller"] if brk.caller_intervals else []
    handles = [Patch(color=PHASE_COLOURS[p], label=p) for p in shown]
    if failed:
        handles.append(ax.collections[-1])
    ax.legend(handles=handles, loc="upper right")
    ax.set_xlim(0, max(brk.wall_seconds, 1e-6))
    ax.set_ylim(-0.6, max(brk.lanes, 1) - 0.4)
    ax.set_yticks(range(brk.lanes))
    ax.set_yticklabels([f"worker {i}" for i in range(brk.lanes)])
    ax.set_xlabel("time since start of run (s)")
    ax.set_ylabel("worker lane")
    ax.set_title(title)
    return _save(fig, path)


def plot_phases(brk: Breakdown, path: Path, title: str = "Where the time went") -> Path:
    fig, ax = _figure()
    names = list(PHASES)
    values = [brk.phases[n] for n in names]
    ax.barh(names, values, color=[PHASE_COLOURS[n] for n in names], label="seconds per worker")
    ax.set_xlabel("seconds of wall time per worker (s)")
    ax.set_ylabel("phase")
    ax.set_title(f"{title} (wall {brk.wall_seconds:.3f} s)")
    ax.legend(loc="lower right")
    return _save(fig, path)


def save_scaling_plots(report: ScalingReport, directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    paths = [
        plot_speedup(report, directory / "speedup.png"),
        plot_efficiency(report, directory / "efficiency.png"),
    ]
    if report.breakdowns:
        largest = max(report.breakdowns)
        brk = report.breakdowns[largest]
        paths.append(plot_timeline(brk, directory / "timeline.png",
                                   f"Per-worker timeline at {largest} workers"))  # fmt: skip
        paths.append(plot_phases(brk, directory / "phases.png",
                                 f"Where the time went at {largest} workers"))  # fmt: skip
    return paths


# -- HTML ----------------------------------------------------------------------------------------

_STYLE = """
body { font-family: sans-serif; margin: 2em; color: #222; max-width: 60em; }
table { border-collapse: collapse; margin: 1em 0; }
td, th { border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: right; }
th { background: #f4f4f4; }
img { display: block; margin: 1em 0; border: 1px solid #eee; }
svg.flame { display: block; margin: 1em 0; border: 1px solid #eee; }
svg.flame text { pointer-events: none; fill: #222; }
li { margin: 0.3em 0; }
"""


def _img(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    alt = html.escape(path.stem)
    return f'<img alt="{alt}" width="800" height="500" src="data:image/png;base64,{data}">'


def _table(headers: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def _phase_table(brk: Breakdown) -> str:
    rows = [[n, f"{brk.phases[n]:.4f}", f"{100 * brk.share(n):.1f}%"] for n in PHASES]
    return _table(["phase", "seconds", "share of wall"], rows)


def _page(title: str, parts: list[str]) -> str:
    return (
        "<!DOCTYPE html><html><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>"
        f"<h1>{html.escape(title)}</h1>" + "\n".join(parts) + "</body></html>\n"
    )


def _advice_list(advice: list[str]) -> str:
    if not advice:
        return "<p>No recommendations: nothing stood out.</p>"
    return "<ul>" + "".join(f"<li>{html.escape(a)}</li>" for a in advice) + "</ul>"


def write_scaling_html(
    report: ScalingReport, path: Path, extra: list[str] | None = None
) -> Path:
    import tempfile

    with tempfile.TemporaryDirectory(prefix="fj-bench-") as tmp:
        plots = save_scaling_plots(report, Path(tmp))
        images = [_img(p) for p in plots]
    model = report.model
    rows = [
        [str(p.workers), f"{p.seconds:.4f}", f"{p.speedup:.2f}x", f"{100 * p.efficiency:.0f}%",
         "-" if p.karp_flatt is None else f"{p.karp_flatt:.3f}",
         "-" if p.gustafson is None else f"{p.gustafson:.2f}x"]
        for p in model.points
    ]  # fmt: skip
    parts = [
        f"<p>{report.items} items, backend <code>{html.escape(report.backend)}</code>, "
        f"{report.repeats} repeats, serial baseline {model.serial_seconds:.4f} s.</p>",
        "<h2>Recommendations</h2>",
        _advice_list(report.advice),
        "<h2>Scaling</h2>",
        _table(["workers", "time (s)", "speedup", "efficiency", "Karp-Flatt", "Gustafson"], rows),
    ]
    if model.amdahl is not None:
        fit = model.amdahl
        parts.append(
            f"<p>Amdahl fit: serial fraction {fit.serial_fraction:.3f} "
            f"(95% CI {fit.ci_low:.3f} to {fit.ci_high:.3f}, R&sup2; {fit.r_squared:.3f}). "
            "Predicted speedup: "
            + html.escape(", ".join(f"{k} workers {v:.2f}x" for k, v in model.predictions.items()))
            + "</p>"
        )
    parts += images[:2]
    if report.breakdowns:
        largest = max(report.breakdowns)
        parts.append(f"<h2>Where the time went at {largest} workers</h2>")
        parts.append(_phase_table(report.breakdowns[largest]))
        parts += images[2:]
    parts += extra or []
    path.write_text(_page(f"forkjoin scaling report: {report.function}", parts))
    return path


def write_run_html(
    brk: Breakdown, advice: list[str], path: Path, title: str, extra: list[str] | None = None
) -> Path:
    """The run report; ``extra`` HTML parts (the profile section) go at the end."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="fj-bench-") as tmp:
        images = [
            _img(plot_timeline(brk, Path(tmp) / "timeline.png")),
            _img(plot_phases(brk, Path(tmp) / "phases.png")),
        ]
    parts = [
        f"<p>{brk.tasks} tasks ({brk.items} items) on {brk.lanes} workers in "
        f"{brk.wall_seconds:.4f} s; {brk.failed_tasks} failed or crashed; mean task "
        f"{brk.mean_task_seconds * 1e3:.3f} ms, mean queue wait "
        f"{brk.mean_queue_seconds * 1e3:.3f} ms.</p>",
        "<h2>Recommendations</h2>",
        _advice_list(advice),
        "<h2>Where the time went</h2>",
        _phase_table(brk),
        *images,
    ]
    if brk.records_dropped:
        parts.insert(0, "<p><b>Note:</b> only the most recent task records were kept.</p>")
    parts += extra or []
    path.write_text(_page(title, parts))
    return path
