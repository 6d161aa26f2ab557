"""Sequence accounting for one plugin run: duplicates, gaps, announced drops."""

from __future__ import annotations

import bisect
from typing import Any


class SequenceTracker:
    """Tells new sequence numbers from redeliveries and remembers the holes.

    Memory grows with the number of holes, not with the number of events:
    a hole is a range of numbers not seen yet, and a late event that falls
    into one splits or shrinks it.
    """

    def __init__(self) -> None:
        self.first: int | None = None
        self.last: int | None = None
        self.duplicates = 0
        # Sorted, disjoint, inclusive ranges of numbers below ``last`` not seen.
        self._hole_starts: list[int] = []
        self._hole_ends: list[int] = []
        self._announced: list[tuple[int, int]] = []

    def is_new(self, sequence: int) -> bool:
        """Record ``sequence``; False when it was seen before (a redelivery)."""
        if self.last is None or self.first is None:
            self.first = self.last = sequence
            return True
        if sequence > self.last:
            if sequence > self.last + 1:
                self._hole_starts.append(self.last + 1)
                self._hole_ends.append(sequence - 1)
            self.last = sequence
            return True
        if sequence < self.first:
            # Earlier than anything seen: the numbers in between are a hole.
            if sequence < self.first - 1:
                self._hole_starts.insert(0, sequence + 1)
                self._hole_ends.insert(0, self.first - 1)
            self.first = sequence
            return True
        return self._fill(sequence)

    def _fill(self, sequence: int) -> bool:
        at = bisect.bisect_right(self._hole_starts, sequence) - 1
        if at < 0 or self._hole_ends[at] < sequence:
            self.duplicates += 1
            return False
        start, end = self._hole_starts[at], self._hole_ends[at]
        if start == end:
            del self._hole_starts[at], self._hole_ends[at]
        elif sequence == start:
            self._hole_starts[at] = start + 1
        elif sequence == end:
            self._hole_ends[at] = end - 1
        else:
            self._hole_ends[at] = sequence - 1
            self._hole_starts.insert(at + 1, sequence + 1)
            self._hole_ends.insert(at + 1, end)
        return True

    def to_state(self) -> dict[str, Any]:
        """What :meth:`from_state` needs to carry on, as JSON-ready builtins."""
        return {
            "first": self.first,
            "last": self.last,
            "duplicates": self.duplicates,
            "holes": [list(hole) for hole in zip(self._hole_starts, self._hole_ends, strict=True)],
            "announced": [list(announced) for announced in self._announced],
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> SequenceTracker:
        """A tracker that carries on where the one that gave ``state`` stopped."""
        tracker = cls()
        tracker.first, tracker.last = state["first"], state["last"]
        tracker.duplicates = state["duplicates"]
        tracker._hole_starts = [start for start, _ in state["holes"]]
        tracker._hole_ends = [end for _, end in state["holes"]]
        tracker._announced = [(first, last) for first, last in state["announced"]]
        return tracker

    def announce_dropped(self, first: int, last: int) -> None:
        """A ``dask.eventbus.dropped`` event said ``first``..``last`` were dropped."""
        self._announced.append((first, last))

    def unexplained_gaps(self) -> list[tuple[int, int]]:
        """Ranges of missing numbers that no dropped announcement covers."""
        gaps = []
        announced = sorted(self._announced)
        for start, end in zip(self._hole_starts, self._hole_ends, strict=True):
            cursor = start
            for first, last in announced:
                if last < cursor or first > end:
                    continue
                if first > cursor:
                    gaps.append((cursor, first - 1))
                cursor = max(cursor, last + 1)
            if cursor <= end:
                gaps.append((cursor, end))
        return gaps
