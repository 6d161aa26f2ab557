"""Delivery statistics: what a sink reports about publishing to the broker."""

from __future__ import annotations

import bisect
from typing import Any


class Histogram:
    """Bucket counts, as Prometheus histograms report them."""

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last bucket is +Inf
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value

    def observe_many(self, values: list[float]) -> None:
        counts, bounds = self.counts, self.bounds
        for value in values:
            counts[bisect.bisect_left(bounds, value)] += 1
        self.total += sum(values)

    def add(self, counts: list[int], total: float) -> None:
        self.counts = [a + b for a, b in zip(self.counts, counts, strict=True)]
        self.total += total

    def state(self) -> tuple[list[int], float]:
        return list(self.counts), self.total


PUBLISH_SECONDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
DELIVERY_SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class DeliveryStats:
    """What a sink reports about delivery to the broker."""

    def __init__(self) -> None:
        self.published = 0
        self.retries = 0
        self.publish_errors = 0
        self.last_error: str | None = None
        self.last_publish_time: float | None = None
        self.connected = False
        """Whether the last attempt to publish succeeded."""
        self.refused = 0
        """Events the broker refused for good (see :class:`~dask_eventbus.backends.Refused`)."""
        self.oversized = 0
        """Events published as dask.eventbus.oversized in place of larger ones."""
        self.publish_seconds = Histogram(PUBLISH_SECONDS)
        """Duration of each successful ``backend.publish`` call."""
        self.delivery_seconds = Histogram(DELIVERY_SECONDS)
        """Per event: from the scheduler seeing it to the broker acknowledging it."""
        self.spool: dict[str, Any] | None = None
        """The spool's statistics (``Spool.snapshot``) when one is configured."""
