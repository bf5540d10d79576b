"""split: cutting a stream of items into tasks, sized by measurement.

With ``chunksize="auto"`` the first tasks hold one item each, until the first result reports how
long an item takes to compute (for tiny items that is one round trip, ~0.2 ms; for slow items the
window is then full of single items, which is the balance they need). From then on each chunk
aims at ``TARGET_TASK_SECONDS`` of work (joblib's auto-batching idea, but measured per item
rather than per batch), capped so that

- a known-length input still gives every worker ``CHUNKS_PER_WORKER`` chunks (balance at the end),
- a chunk never carries more than ``TARGET_TASK_BYTES`` of pickled items, nor returns more than
  that of results (bounded memory; results stream back and their shared-memory segments recycle),
- a chunk never exceeds ``MAX_AUTO_CHUNKSIZE`` items (bounded memory for endless inputs).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from typing import Any

# Work per task: long enough that per-task overhead (~50-100 us round trip) is < 1%, short
# enough to stream results and balance load. Chosen with benchmarks/bench_engine.py.
TARGET_TASK_SECONDS = 0.02
# Chunks per worker for inputs of known length, so the last chunks do not leave workers idle.
CHUNKS_PER_WORKER = 4
# Pickled bytes per task before the chunk is cut, whatever the timing says.
TARGET_TASK_BYTES = 8 * 2**20
# Items per task, at most, in auto mode.
MAX_AUTO_CHUNKSIZE = 50_000
# Smoothing of the per-item measurements: the weight older measurements lose at each new one.
SMOOTHING = 0.3
# Under faults (workers dying), a chunk's expected loss is half its length per fault, and its
# cost is one round trip: the length that minimises both is sqrt(2 * round trip * mean compute
# time between faults), Young's optimal checkpoint interval (Young, CACM 1974). These are the
# round trip it assumes (measured: 2M trivial items in chunks of 500 vs 5000 cost 0.2 ms more
# per task) and how slowly the fault rate forgets (per measured chunk).
TASK_OVERHEAD_SECONDS = 2e-4
FAULT_MEMORY = 0.99
# ...and the least work per chunk it goes down to (a fault in the very first chunk tells little).
MIN_FAULT_TASK_SECONDS = 0.0005


class AutoChunker:
    """Decides the size of the next chunk from what previous chunks measured."""

    def __init__(self, workers: int, total: int | None, chunksize: int | str = "auto") -> None:
        self.fixed = chunksize if isinstance(chunksize, int) else None
        self.cap = MAX_AUTO_CHUNKSIZE
        if total is not None:
            self.cap = max(1, min(self.cap, math.ceil(total / (workers * CHUNKS_PER_WORKER))))
        self.seconds_per_item: float | None = None
        self.bytes_per_item: float | None = None  # the larger of the two directions
        self._bytes_per_item = {"sent": 0.0, "received": 0.0}
        self._seconds = 0.0  # decayed sums behind seconds_per_item
        self._items = 0.0
        self._faults = 0.0  # decayed count of faults, and of compute seconds, for fault_seconds
        self._fault_window = 0.0

    def next_size(self) -> int:
        if self.fixed is not None:
            return self.fixed
        size = self.cap
        if self.seconds_per_item is None:
            size = 1
        else:
            seconds = TARGET_TASK_SECONDS
            if self._faults:
                seconds = min(seconds, self.fault_seconds())
            size = min(size, max(1, int(seconds / max(self.seconds_per_item, 1e-7))))
        if self.bytes_per_item:
            size = min(size, max(1, int(TARGET_TASK_BYTES / self.bytes_per_item)))
        return size

    def fault_seconds(self) -> float:
        """The work per chunk that loses least to the faults seen so far (see FAULT_MEMORY)."""
        between_faults = self._fault_window / self._faults
        return max(MIN_FAULT_TASK_SECONDS, math.sqrt(2 * TASK_OVERHEAD_SECONDS * between_faults))

    def observe_fault(self) -> None:
        """A chunk's worker died or was stopped: shorter chunks lose less to the next one."""
        if self.fixed is None:
            self._faults += 1

    def observe_compute(self, items: int, seconds: float) -> None:
        """A task of ``items`` items took ``seconds`` of compute in its worker."""
        if items <= 0 or self.fixed is not None:
            return
        self._faults *= FAULT_MEMORY
        self._fault_window = self._fault_window * FAULT_MEMORY + seconds
        # Decayed sums, so each measurement counts by its number of items: the first one-item
        # task (mostly fixed overhead) must not hold back the estimate from a 5000-item chunk.
        keep = 1.0 - SMOOTHING
        self._seconds = self._seconds * keep + seconds
        self._items = self._items * keep + items
        self.seconds_per_item = self._seconds / self._items

    def observe_bytes(self, items: int, nbytes: int, direction: str = "sent") -> None:
        """A task of ``items`` items pickled to ``nbytes`` (its arguments, or its results)."""
        if items <= 0 or nbytes <= 0 or self.fixed is not None:
            return
        per_item = nbytes / items
        estimates = self._bytes_per_item
        previous = estimates[direction]
        estimates[direction] = (
            per_item if not previous else previous + SMOOTHING * (per_item - previous)
        )
        self.bytes_per_item = max(estimates.values())


def take_chunk(iterator: Iterator[Any], size: int) -> list[Any]:
    return list(itertools.islice(iterator, size))
