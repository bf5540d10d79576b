"""What the hand-written native Ray and Dask code runs: one engine task per chunk of items.

Kept importable (not in ``bench_cluster``, which runs as ``__main__``) so that Ray and Dask
workers unpickle these functions by name, as they do ``_workloads``' own.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any


def apply_chunk(fn: Callable[[Any], Any], chunk: Sequence[Any]) -> list[Any]:
    """What a user writes to chunk by hand: one remote call runs ``fn`` over many items."""
    return [fn(x) for x in chunk]


def apply_chunk_boxed(fn: Callable[[Any], Any], chunk: Sequence[Any]) -> tuple[list[Any]]:
    """``apply_chunk`` with its list returned inside a 1-tuple, for Dask.

    ``client.gather`` of a task whose result is a plain list of 12,500 ints takes seconds here
    (Dask walks list results looking for futures to replace), about 50x the whole map; a boxed
    list comes back as fast as any object. The hand-written Dask code gets this fix, so it is
    compared at its best, not at a pitfall.
    """
    return ([fn(x) for x in chunk],)


def split(items: Sequence[Any], chunksize: int) -> list[list[Any]]:
    """Consecutive chunks of ``chunksize`` items (the last one shorter), as forkjoin cuts them."""
    return [list(items[i : i + chunksize]) for i in range(0, len(items), chunksize)]


def flatten(chunks: Sequence[Sequence[Any]]) -> list[Any]:
    return [x for chunk in chunks for x in chunk]
