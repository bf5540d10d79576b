"""Where the engine's calls meet the observers (profiler, dashboard).

The engine imports this module only when ``profile=`` or ``dashboard=`` is on, and hands in what
it has (the function, the event log, the pool); nothing here reaches back into the engine's
internals, so the engine stays free of this package when both are off.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

from .profile import Profile, ProfileSession

_last_profile: Profile | None = None


def last_profile() -> Profile | None:
    """The profile of the most recent ``profile=True`` call in this process (None before)."""
    return _last_profile


def start_profile(fn: Callable[..., Any]) -> tuple[Callable[..., Any], ProfileSession]:
    session = ProfileSession()
    return session.wrap(fn), session


def deliver_profile(
    profile: Profile,
    target: bool | str,
    report: str | None,
    *,
    events: Any = None,
    since: float | None = None,
    until: float | None = None,
    workers: int | None = None,
) -> None:
    """Hand a finished profile to the user as asked: speedscope JSON at ``target`` when it is a
    path; inside the run report when there is one; else its top functions on stderr."""
    global _last_profile
    _last_profile = profile
    if isinstance(target, str):
        profile.write_speedscope(target)
    if report is not None:
        from ..bench.report import write_run_report

        write_run_report(events, report, since=since, until=until, workers=workers, profile=profile)
    elif not isinstance(target, str):
        print(profile.render_text(), file=sys.stderr)


def collect_profiled(
    job: Any, session: ProfileSession, target: bool | str, report: str | None
) -> list[Any]:
    """``job.collect()``; then the profile (and the report, if asked) delivered, also when
    the call failed: the profile of a failing run is often the one a user needs."""
    since = time.monotonic()
    try:
        return job.collect()
    finally:
        profile = session.stop()
        deliver_profile(
            profile, target, report, events=job.events, since=since, until=time.monotonic(),
            workers=job.backend.workers,
        )  # fmt: skip


def iterate_profiled(job: Any, session: ProfileSession, target: bool | str) -> Iterator[Any]:
    """``iter(job)`` that delivers the profile once the iteration ends (or is abandoned)."""
    try:
        yield from job
    finally:
        deliver_profile(session.stop(), target, None)


def follow_training(
    env: dict[str, str] | None, ranks: int
) -> tuple[dict[str, str] | None, Callable[[], None]]:
    """If a dashboard is up in this process, show a training gang on it: its rank 0's metrics
    log (``fj.train.log`` lines) is followed, in a temporary file unless the user set one.
    Returns the ranks' environment and what to call when the gang ends. No dashboard: nothing
    (this module is only imported once the dashboard module is)."""
    from .dashboard import active

    board = active()
    if board is None:
        return env, lambda: None
    import os
    import tempfile

    env = dict(env or {})
    path = env.get("FORKJOIN_TRAIN_LOG") or os.environ.get("FORKJOIN_TRAIN_LOG")
    temporary = None
    if not path:
        fd, temporary = tempfile.mkstemp(prefix="forkjoin-trainlog-", suffix=".jsonl")
        os.close(fd)
        env["FORKJOIN_TRAIN_LOG"] = path = temporary
    run = board.view.follow_training(path, ranks)

    def stop() -> None:
        board.view.stop_training(run)
        if temporary is not None:
            os.unlink(temporary)

    return env, stop


def follow_data_stage(label: str, partitions: int, window: int) -> Any:
    """If a dashboard is up, a handle that shows one ``forkjoin.data`` stage on it; else None."""
    from .dashboard import active

    board = active()
    return None if board is None else (board.view, board.view.follow_data_stage(
        label, partitions, window
    ))  # fmt: skip


class PoolObserver:
    """What ``Pool(profile=True)`` and ``Pool(dashboard=True)`` add to a pool: a profiling
    session for the pool's lifetime and/or a live dashboard of its event log."""

    def __init__(self, pool: Any, dashboard: bool | int, profile: bool | str) -> None:
        self.target = profile
        self.session = ProfileSession() if profile else None
        self.dashboard = None
        if dashboard:
            from .dashboard import start_dashboard

            port = 0 if dashboard is True else int(dashboard)
            self.dashboard = start_dashboard([pool.events], port=port, title=repr(pool))

    def wrap(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        return fn if self.session is None else self.session.wrap(fn)

    def profile(self) -> Profile | None:
        """The pool's profile so far (final once the pool is shut down)."""
        return None if self.session is None else self.session.snapshot()

    def close(self) -> None:
        """Called as the pool shuts down: the final profile is delivered, the page stops."""
        try:
            if self.session is not None and self.session.result is None:
                profile = self.session.stop()
                if isinstance(self.target, str):
                    profile.write_speedscope(self.target)
        finally:
            if self.dashboard is not None:
                self.dashboard.close()
