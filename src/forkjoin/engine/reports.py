"""Where ``report=`` and ``Pool.report`` send a run's events: a writer passed in from above.

The engine records events; turning them into an HTML/JSON/text report is the analysis layer's
job (``forkjoin.bench``), which sits above the engine and may not be imported by it. The
package (``forkjoin/__init__.py``) passes the analysis layer's writer in here at import, loaded
only when a report is first asked for; an application embedding the engine alone can install
its own with ``set_report_writer``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

ReportWriter = Callable[..., Any]  # (pool or events, path, *, since, until, workers) -> Path

_writer: ReportWriter | None = None


def set_report_writer(writer: ReportWriter) -> None:
    global _writer
    _writer = writer


def write_run_report(*args: Any, **kwargs: Any) -> Any:
    """Write a run report with the installed writer."""
    if _writer is None:
        raise RuntimeError(
            "no run report writer is installed; import forkjoin (which installs the analysis "
            "layer's) or call forkjoin.engine.reports.set_report_writer"
        )
    return _writer(*args, **kwargs)
