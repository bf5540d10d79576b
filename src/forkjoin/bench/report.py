"""``write_run_report``: the breakdown and per-worker timeline of any real run, as HTML or JSON.

Works from a ``Pool`` (its ``pool.events``), an ``EventLog``, or the records themselves. The
engine's ``fj.map(..., report="run.html")`` and ``pool.report(path)`` call this.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .advice import advise_breakdown
from .breakdown import Breakdown, breakdown_of_events


def _events_of(source: Any) -> Any:
    events = getattr(source, "events", source)  # a Pool exposes its EventLog as .events
    if not hasattr(events, "task_records"):
        raise TypeError(
            f"write_run_report needs a forkjoin Pool or its EventLog (pool.events), got "
            f"{type(source).__name__}"
        )
    return events


def run_breakdown(
    pool_or_events: Any,
    *,
    since: float | None = None,
    until: float | None = None,
    workers: int | None = None,
) -> Breakdown:
    """The phase breakdown of a pool's recorded tasks, optionally only those in
    ``[since, until]`` (``time.monotonic()`` values; e.g. taken around one ``map`` call)."""
    events = _events_of(pool_or_events)
    if workers is None:  # a Pool knows its worker count (an EventLog's .workers is records)
        count = getattr(pool_or_events, "workers", None)
        workers = count if isinstance(count, int) else None
    return breakdown_of_events(events, workers=workers, t0=since, t1=until)


def write_run_report(
    pool_or_events: Any,
    path: str | Path,
    *,
    since: float | None = None,
    until: float | None = None,
    workers: int | None = None,
    title: str | None = None,
    profile: Any = None,
) -> Path:
    """Write the run's breakdown, timeline and advice to ``path``: ``.html`` (self-contained,
    plots embedded), ``.json`` (every number and the timeline) or ``.txt`` (tables).

    With a ``profile`` (``forkjoin.observe.profile.Profile``, from ``profile=True``) the report
    also has the workers' top functions and a flame graph, and speedscope JSON is written next
    to it (``run.speedscope.json`` beside ``run.html``)."""
    path = Path(path)
    speedscope = None
    if profile is not None:
        speedscope = path.with_name(path.stem + ".speedscope.json")
        profile.write_speedscope(speedscope, name=path.stem)
    brk = run_breakdown(pool_or_events, since=since, until=until, workers=workers)
    advice = advise_breakdown(brk)
    suffix = path.suffix.lower()
    if suffix == ".json":
        data = brk.as_dict(timeline=True)
        data["advice"] = advice
        if profile is not None:
            data["profile"] = profile.as_dict()
        path.write_text(json.dumps(data, indent=2, default=float))
    elif suffix in (".txt", ".text"):
        from .render import render_breakdown_text

        text = render_breakdown_text(brk, advice)
        if profile is not None:
            text += "\n\n" + profile.render_text()
        path.write_text(text)
    else:
        from .render import write_run_html

        extra = None
        if profile is not None:
            from ..observe.flamegraph import profile_html
            from .render import _table

            extra = profile_html(profile, _table, speedscope.name if speedscope else None)
        write_run_html(brk, advice, path, title or "forkjoin run report", extra)
    return path
