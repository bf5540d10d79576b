"""merge: putting results back in input order, with a bounded buffer.

Tasks finish in any order and may be split (to isolate a failing item) or retried, so results
arrive as fragments: runs of consecutive items keyed by their first index. ``OrderedMerge`` hands
them back in order as soon as the next expected index is present.
"""

from __future__ import annotations

from typing import Any


class OrderedMerge:
    def __init__(self) -> None:
        self.next_index = 0
        self._fragments: dict[int, list[Any]] = {}

    def __len__(self) -> int:
        """Fragments buffered, waiting for an earlier one."""
        return len(self._fragments)

    def add(self, first_index: int, values: list[Any]) -> None:
        if values:
            self._fragments[first_index] = values

    def pop_ready(self) -> list[Any]:
        """Every value whose turn has come, in input order (empty if the next is missing)."""
        fragments = self._fragments
        values = fragments.pop(self.next_index, None)
        if values is None:
            return []
        self.next_index += len(values)
        while self.next_index in fragments:
            more = fragments.pop(self.next_index)
            values = values + more
            self.next_index += len(more)
        return values
