"""See inside a running job: a live dashboard and a profiler that follows the workers.

- ``sampler.py``: the worker side of the profiler (standard library only: workers import it).
- ``profile.py``: the caller side: a session, merging per function, speedscope export.
- ``flamegraph.py``: the flame graph and tables the HTML run report embeds.
- ``dashboard.py`` (+ ``static/``): the live page, served on 127.0.0.1 behind a random token.
- ``runs.py``: where the engine's calls hand things in when ``profile=``/``dashboard=`` is on.

Nothing here is imported unless one of them is asked for.
"""

from typing import TYPE_CHECKING, Any

# ``dashboard()`` itself is ``fj.dashboard``: here the name is its submodule once imported.
__all__ = ["Dashboard", "FunctionTime", "Profile", "last_profile"]

_EXPORTS = {
    "Dashboard": "forkjoin.observe.dashboard",
    "FunctionTime": "forkjoin.observe.profile",
    "Profile": "forkjoin.observe.profile",
    "last_profile": "forkjoin.observe.runs",
}


def __getattr__(name: str) -> Any:
    """Loaded on first use: importing the layer starts nothing and loads no server."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'forkjoin.observe' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)


if TYPE_CHECKING:
    from .dashboard import Dashboard
    from .profile import FunctionTime, Profile
    from .runs import last_profile
