"""What the data-plane benchmark's workers run.

Importable by name from every kind of worker (forked, spawned, loky, forkjoin and Ray workers,
which find ``benchmarks/`` through ``PYTHONPATH``). Only numpy is imported here.

Data are small integers stored as float64, so every sum is exact and a result can be checked
with ``==`` whatever order a worker adds the numbers in.
"""

from __future__ import annotations

from typing import Any

import numpy as np

ELEMENT = np.dtype(np.float64).itemsize


def make_arrays(count: int, nbytes: int, seed: int = 0) -> list[np.ndarray]:
    """``count`` distinct float64 arrays of ``nbytes`` each, values 0..999."""
    rng = np.random.default_rng(seed)
    n = nbytes // ELEMENT
    return [rng.integers(0, 1000, n).astype(np.float64) for _ in range(count)]


def make_big(nbytes: int) -> np.ndarray:
    """The broadcast object: ``nbytes`` of float64 values ``i % 251``, built in pieces so that
    no temporary larger than 64 MiB is needed on top of it."""
    n = nbytes // ELEMENT
    out = np.empty(n, dtype=np.float64)
    step = 8 * 1024 * 1024
    pattern = np.arange(step, dtype=np.int64)
    for start in range(0, n, step):
        stop = min(start + step, n)
        out[start:stop] = (pattern[: stop - start] + start) % 251
    return out


def block_bounds(length: int, blocks: int, i: int) -> tuple[int, int]:
    step = length // blocks
    return i * step, (i + 1) * step if i < blocks - 1 else length


def expected_block_sums(big: np.ndarray, blocks: int) -> list[float]:
    return [float(big[slice(*block_bounds(len(big), blocks, i))].sum()) for i in range(blocks)]


# -- the tasks -----------------------------------------------------------------------------------


def total(a: np.ndarray) -> float:
    """send: the worker reads the whole array it received."""
    return float(a.sum())


def make(i: int, nbytes: int = 16 * 1024 * 1024) -> np.ndarray:
    """return: a new array of ``nbytes``, every element ``i``."""
    return np.full(nbytes // ELEMENT, i, dtype=np.float64)


def block_sum(big: np.ndarray, blocks: int, i: int) -> float:
    """broadcast: task ``i`` of ``blocks`` sums its own contiguous slice of the big object."""
    return float(big[slice(*block_bounds(len(big), blocks, i))].sum())


def block_sum_shared(handle: Any, blocks: int, i: int) -> float:
    """broadcast through ``fj.shared``: the same, on ``handle.get()``."""
    return block_sum(handle.get(), blocks, i)


def echo(a: Any) -> Any:
    """threshold sweep: the payload goes there and back."""
    return a


def worker_threshold(_: Any = None) -> int:
    """The out-of-band threshold as a forkjoin worker sees it."""
    from forkjoin.backends import buffers

    return buffers.OUT_OF_BAND_MIN_BYTES


def apply_threshold_env() -> None:
    """Pool initializer: make this worker use ``FORKJOIN_OUT_OF_BAND_MIN_BYTES``.

    forkjoin is meant to read that variable at import; where it does not (the value stays at its
    default), the sweep sets the module constant itself, here and in the caller, so that it still
    measures what it says. A no-op where forkjoin honours the variable.
    """
    import os

    from forkjoin.backends import buffers

    value = os.environ.get("FORKJOIN_OUT_OF_BAND_MIN_BYTES")
    if value:
        buffers.OUT_OF_BAND_MIN_BYTES = int(value)


def noop(x: Any = None) -> Any:
    return x
