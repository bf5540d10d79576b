"""A progress bar with throughput and ETA, fed by the scheduler as results merge.

``progress=None`` (the default) shows it only when stderr is a terminal and the job is still
running after ``AUTO_DELAY_SECONDS``; ``True`` shows it at once, ``False`` never. tqdm draws it
when installed, else rich; with neither, nothing is drawn.
"""

from __future__ import annotations

import sys
from typing import Any

# Jobs shorter than this never flash a bar on screen in auto mode.
AUTO_DELAY_SECONDS = 2.0


class ProgressBar:
    """Counts finished items; cheap to update (the drawing library rate-limits redraws)."""

    def __init__(self, total: int | None, enabled: bool | None, description: str = "forkjoin"):
        self._bar: Any = None
        self._rich: Any = None
        if enabled is False or (enabled is None and not _stderr_is_terminal()):
            return
        delay = AUTO_DELAY_SECONDS if enabled is None else 0.0
        try:
            from tqdm.auto import tqdm

            self._bar = tqdm(
                total=total,
                desc=description,
                unit="item",
                delay=delay,
                mininterval=0.2,
                dynamic_ncols=True,
                file=sys.stderr,
            )
            return
        except ImportError:
            pass
        try:
            from rich.progress import Progress
        except ImportError:
            return
        self._rich = Progress(transient=False)
        self._rich.start()
        self._bar = self._rich.add_task(description, total=total)

    @property
    def active(self) -> bool:
        return self._bar is not None

    def update(self, items: int) -> None:
        if self._bar is None:
            return
        if self._rich is not None:
            self._rich.advance(self._bar, items)
        else:
            self._bar.update(items)

    def close(self) -> None:
        if self._bar is None:
            return
        if self._rich is not None:
            self._rich.stop()
        else:
            self._bar.close()
        self._bar = None


def _stderr_is_terminal() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False
