"""The options every parallel call shares, as one frozen dataclass.

``map``, ``imap``, ``map_reduce`` and ``Pool`` methods all take the same keyword arguments; they
are validated once here instead of being copied onto every signature.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

OnError = Literal["raise", "collect", "skip"]
_ON_ERROR_CHOICES = ("raise", "collect", "skip")


@dataclass(frozen=True)
class RunOptions:
    """How one parallel call runs.

    workers:   number of worker slots (None: every usable core).
    backend:   "process" (default), "threads", "inline", or a later backend's name.
    chunksize: items per task, or "auto" to adapt to measured task duration.
    ordered:   results in input order (True) or as they finish (False).
    retries:   how many times a task whose *worker died* is run again on a fresh worker.
    retry_on:  exception types that also cause a retry when a task raises them.
    timeout:   seconds a task may run before its worker is stopped (per task, i.e. per chunk).
    resources: per-task resource request, e.g. {"cpu": 1} (checked against what the pool has).
    progress:  True / False, or None: on when stderr is a terminal and the job lasts > ~2 s.
    seed:      gives each item its own reproducible random stream (see ``forkjoin.rng``).
    on_error:  "raise" the first failure, "collect" failures in place of results, or "skip"
               failed items with a warning that counts them.
    max_in_flight: tasks submitted but not yet merged (backpressure); None: 4 per worker.
    memory_limit: resident memory a worker may use (bytes or "4GB"): a task that pushes its
               worker past it is stopped (WorkerCrashedError naming the limit), and a worker
               that stays above it between tasks is replaced. Process backend only.
    address:   the cluster a "ray" or "dask" backend joins: "auto", "ray://host:10001",
               "tcp://host:8786", or a ready ``distributed.Client``; None starts a local one
               (127.0.0.1 only) unless one is already connected.
    cluster_options: keyword arguments for ``ray.init`` / ``distributed.Client`` when joining
               (a Dask TLS ``security=``, a Ray ``runtime_env=``...).
    profile:   sample the workers' Python stacks and merge them per function (forkjoin.observe):
               True prints the top functions (or, with report=, adds a flame graph to it); a
               path ("run.speedscope.json") also writes speedscope JSON. Off: nothing runs.
    """

    workers: int | None = None
    backend: str | None = None
    chunksize: int | Literal["auto"] = "auto"
    ordered: bool = True
    retries: int = 2
    retry_on: tuple[type[BaseException], ...] = ()
    timeout: float | None = None
    resources: Mapping[str, float] | None = field(default=None, hash=False)
    progress: bool | None = None
    seed: int | None = None
    on_error: OnError = "raise"
    max_in_flight: int | None = None
    memory_limit: int | str | None = None
    address: Any = field(default=None, hash=False, compare=False)
    cluster_options: Mapping[str, Any] | None = field(default=None, hash=False, compare=False)
    profile: bool | str = False  # observe: see forkjoin/observe/profile.py

    def __post_init__(self) -> None:
        if self.workers is not None and (not isinstance(self.workers, int) or self.workers < 1):
            raise ValueError(f"workers must be a positive integer or None, got {self.workers!r}")
        if self.chunksize != "auto" and (not isinstance(self.chunksize, int) or self.chunksize < 1):
            raise ValueError(
                f'chunksize must be a positive integer or "auto", got {self.chunksize!r}'
            )
        if not isinstance(self.retries, int) or self.retries < 0:
            raise ValueError(f"retries must be an integer >= 0, got {self.retries!r}")
        if self.timeout is not None and not self.timeout > 0:
            raise ValueError(f"timeout must be a positive number of seconds, got {self.timeout!r}")
        if self.on_error not in _ON_ERROR_CHOICES:
            raise ValueError(f"on_error must be one of {_ON_ERROR_CHOICES}, got {self.on_error!r}")
        if self.seed is not None and (not isinstance(self.seed, int) or self.seed < 0):
            raise ValueError(f"seed must be a non-negative integer, got {self.seed!r}")
        if self.max_in_flight is not None and self.max_in_flight < 1:
            raise ValueError(f"max_in_flight must be >= 1, got {self.max_in_flight!r}")
        if self.memory_limit is not None:
            from ..machine import parse_memory

            limit = parse_memory(self.memory_limit)
            if limit <= 0:
                raise ValueError(f"memory_limit must be positive, got {self.memory_limit!r}")
            object.__setattr__(self, "memory_limit", limit)
        retry_on = self.retry_on
        if isinstance(retry_on, type):
            object.__setattr__(self, "retry_on", (retry_on,))
        elif not isinstance(retry_on, tuple):
            object.__setattr__(self, "retry_on", tuple(retry_on))

    def replace(self, **changes: Any) -> RunOptions:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)


OPTION_NAMES = frozenset(f.name for f in dataclasses.fields(RunOptions))


def options_from(base: RunOptions | None = None, **kwargs: Any) -> RunOptions:
    """Build RunOptions from keyword arguments, naming any unknown one."""
    unknown = set(kwargs) - OPTION_NAMES
    if unknown:
        raise TypeError(
            f"unknown option(s) {sorted(unknown)}; valid options are {sorted(OPTION_NAMES)}"
        )
    base = base or RunOptions()
    return dataclasses.replace(base, **kwargs) if kwargs else base
