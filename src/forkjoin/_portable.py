"""How an item's exception is made to cross a process boundary and come back as its own type.

A leaf module (the standard library's ``pickle`` and nothing of forkjoin): a worker imports it
the first time one of its items raises, and ``forkjoin.errors``, which it would otherwise need,
imports ``concurrent.futures.process`` (for ``BrokenProcessPool``) and ~35 modules with it,
10-45 ms of CPU. A job whose items both kill their worker now and then and raise paid that in
every replacement worker that saw an exception: double the CPU of the deaths themselves.
"""

from __future__ import annotations

import pickle
from typing import Any


class _ByState:
    """Pickles an exception as its class, ``args`` and ``__dict__``, rebuilt without calling
    ``__init__``: ``NeedsTwoArgs(code, detail)`` pickles by default as ``NeedsTwoArgs(message)``,
    which raises TypeError on the way back."""

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc

    def __reduce__(self) -> Any:
        exc = self.exc
        return (_rebuild_without_init, (type(exc), exc.args, getattr(exc, "__dict__", None)))


def _rebuild_without_init(
    cls: type[BaseException], args: tuple[Any, ...], state: dict[str, Any] | None
) -> BaseException:
    exc = cls.__new__(cls, *args)
    exc.args = args
    if state:
        exc.__dict__.update(state)
    return exc


def portable_exception(exc: BaseException) -> Any:
    """What to pickle for ``exc`` so that it comes back as an instance of its type: itself when
    it round-trips, else a by-state record (None-like failures are the caller's to handle: this
    may still raise for an exception holding a lock or a socket)."""
    try:
        pickle.loads(pickle.dumps(exc, pickle.HIGHEST_PROTOCOL))
        return exc
    except BaseException:  # rebuilding runs the type's own code, which may raise anything
        return _ByState(exc)
