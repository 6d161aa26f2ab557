"""Counts over time in a bounded number of buckets, for the progress plots."""

from __future__ import annotations

from collections.abc import Hashable


class Timeline:
    """Sums of ``delta`` per series per time bucket, at most ``max_buckets`` wide.

    The bucket width starts small and doubles whenever the covered time span
    would need more buckets, so memory stays bounded whatever the run's length
    while short runs keep a fine resolution.
    """

    def __init__(self, max_buckets: int = 500, width: float = 0.01) -> None:
        self.max_buckets = max_buckets
        self.width = width
        self.origin: float | None = None
        self.buckets: dict[int, dict[Hashable, int]] = {}
        self._low = 0
        self._high = 0

    def add(self, when: float, series: Hashable, delta: int = 1) -> None:
        """Add ``delta`` to ``series`` at time ``when`` (seconds since the epoch)."""
        if self.origin is None:
            self.origin = when
        index = int((when - self.origin) // self.width)
        bucket = self.buckets.get(index)
        if bucket is None:
            if index < self._low:
                self._low = index
            elif index > self._high:
                self._high = index
            if self._high - self._low >= self.max_buckets:
                self._coarsen()
                index = int((when - self.origin) // self.width)
            bucket = self.buckets.setdefault(index, {})
        bucket[series] = bucket.get(series, 0) + delta

    def _coarsen(self) -> None:
        while self._high - self._low >= self.max_buckets:
            self.width *= 2
            self._low //= 2
            self._high //= 2
            merged: dict[int, dict[Hashable, int]] = {}
            for index, counts in self.buckets.items():
                target = merged.setdefault(index // 2, {})
                for series, value in counts.items():
                    target[series] = target.get(series, 0) + value
            self.buckets = merged

    def cumulative(self, series: list[Hashable]) -> tuple[list[float], dict[Hashable, list[int]]]:
        """Bucket end times and, per series, the running total at each of them."""
        if self.origin is None:
            return [], {s: [] for s in series}
        indices = range(self._low, self._high + 1)
        times = [self.origin + (i + 1) * self.width for i in indices]
        result: dict[Hashable, list[int]] = {}
        for name in series:
            total = 0
            values = []
            for i in indices:
                total += self.buckets.get(i, {}).get(name, 0)
                values.append(total)
            result[name] = values
        return times, result
