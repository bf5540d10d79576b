"""The bounded queue between two stages of a pipeline (pipeline.py): what bounds the blocks in
flight between a fast producer and a slow consumer, and how a stopped run unblocks a feeder."""

from __future__ import annotations

import queue
import threading
from typing import Any

# How long a feeder waits to hand on a block before it checks whether the run was stopped.
STOP_CHECK_SECONDS = 0.2


class End:
    """Marks the end of a channel's stream (``error`` set when the producer failed)."""

    def __init__(self, error: BaseException | None = None) -> None:
        self.error = error


class Stopped(Exception):
    """The run was stopped (consumer closed, or another stage failed)."""


class Channel:
    """A bounded queue between two stages; a put wakes the consumer's dispatcher."""

    def __init__(self, capacity: int, stop: threading.Event) -> None:
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=capacity)
        self._stop = stop
        self.capacity = capacity
        self.wake: threading.Event | None = None  # set to the consumer's event by the consumer

    def put(self, item: Any) -> None:
        while True:
            if self._stop.is_set():
                raise Stopped()
            try:
                self._queue.put(item, timeout=STOP_CHECK_SECONDS)
                break
            except queue.Full:
                continue
        if self.wake is not None:
            self.wake.set()

    def get_nowait(self) -> Any:
        return self._queue.get_nowait()

    def waiting(self) -> bool:
        """Whether blocks are waiting here for the consumer (approximate, as qsize is)."""
        return not self._queue.empty()
