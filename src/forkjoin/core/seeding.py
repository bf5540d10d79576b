"""Per-item random streams: ``seed=`` makes every item's randomness reproducible.

Item ``i`` of a call with ``seed=s`` gets ``SeedSequence(s, spawn_key=(i,))``, which is exactly
``SeedSequence(s).spawn(n)[i]``: the stream depends only on the seed and the item's index, never on
the worker count, the chunking or the order tasks run in. ``forkjoin.rng()`` returns a
``numpy.random.Generator`` on it, on every backend. In worker processes and on the inline backend,
Python's ``random`` and (if loaded) NumPy's legacy global generator are also seeded from it before
each item; the threads backend leaves those alone, since all its threads share them.
"""

from __future__ import annotations

import sys
import threading
from typing import Any

_current = threading.local()


def enter_item(seed: int, index: int, *, seed_globals: bool = True) -> None:
    """Make ``index``'s stream current; seed the global generators too when asked."""
    _current.seed = seed
    _current.index = index
    _current.rng = None
    if seed_globals:
        import random

        state = _seed_sequence(seed, index).generate_state(2, dtype="uint32")
        random.seed(int(state[0]) << 32 | int(state[1]))
        numpy = sys.modules.get("numpy")
        if numpy is not None:
            numpy.random.seed(int(state[0]))


def leave_item() -> None:
    _current.seed = None
    _current.rng = None


def _seed_sequence(seed: int, index: int) -> Any:
    import numpy as np

    return np.random.SeedSequence(seed, spawn_key=(index,))


def rng() -> Any:
    """The current item's ``numpy.random.Generator``, reproducible under ``seed=``.

    Only available inside a task of a call made with ``seed=``; raises RuntimeError elsewhere.
    """
    seed = getattr(_current, "seed", None)
    if seed is None:
        raise RuntimeError(
            "forkjoin.rng() is only available inside a task of a call made with seed=...; "
            "pass seed=<int> to map/imap/map_reduce/submit"
        )
    generator = _current.rng
    if generator is None:
        import numpy as np

        generator = _current.rng = np.random.default_rng(_seed_sequence(seed, _current.index))
    return generator
