"""Prometheus metrics of the event bus, on the scheduler's own ``/metrics``.

distributed serves ``prometheus_client``'s default registry at the
dashboard's ``/metrics``; each started plugin registers a collector there
(when ``prometheus_client`` is installed) and removes it when it closes.
Labels stay low-cardinality: the backend name only.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import dask.config

from .pipeline import Histogram, Pipeline

try:
    from prometheus_client import REGISTRY
    from prometheus_client.core import (
        CounterMetricFamily,
        GaugeMetricFamily,
        HistogramMetricFamily,
    )
except ImportError:  # metrics are optional, like distributed's own
    REGISTRY = None  # type: ignore[assignment]


class EventBusCollector:
    """Reads one pipeline's statistics whenever Prometheus scrapes."""

    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline
        namespace = dask.config.get("distributed.dashboard.prometheus.namespace", "dask")
        self.prefix = f"{namespace}_eventbus_" if namespace else "eventbus_"

    def collect(self) -> Iterator[Any]:
        p, labels = self.pipeline, [self.pipeline.backend.name]
        delivery = p.sink.stats

        def counter(name: str, doc: str, value: float) -> Any:
            family = CounterMetricFamily(self.prefix + name, doc, labels=["backend"])
            family.add_metric(labels, value)
            return family

        def gauge(name: str, doc: str, value: float) -> Any:
            family = GaugeMetricFamily(self.prefix + name, doc, labels=["backend"])
            family.add_metric(labels, value)
            return family

        def histogram(name: str, doc: str, h: Histogram) -> Any:
            family = HistogramMetricFamily(self.prefix + name, doc, labels=["backend"])
            cumulative, buckets = 0, []
            for bound, count in zip([*h.bounds, float("inf")], h.counts, strict=True):
                cumulative += count
                buckets.append((_le(bound), cumulative))
            family.add_metric(labels, buckets, h.total)
            return family

        yield counter("events_published", "Events the broker acknowledged.", delivery.published)
        yield counter("events_dropped", "Events dropped because the queue was full.", p.dropped)
        yield counter("publish_retries", "Publishes retried after a failure.", delivery.retries)
        yield counter(
            "publish_errors", "Failed attempts to publish a batch.", delivery.publish_errors
        )
        yield gauge("queue_events", "Events captured and not yet acknowledged.", p.queued())
        yield gauge("queue_capacity_events", "eventbus.queue.max-events.", p.max_events)
        yield gauge(
            "backend_connected", "1 if the last publish succeeded.", int(delivery.connected)
        )
        yield histogram(
            "publish_duration_seconds", "Time to publish one batch.", delivery.publish_seconds
        )
        yield histogram(
            "delivery_latency_seconds",
            "Per event, from the scheduler seeing it to the broker acknowledging it.",
            delivery.delivery_seconds,
        )


def _le(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(bound)


def export(pipeline: Pipeline) -> Callable[[], None]:
    """Register the pipeline's metrics; returns the function that removes them."""
    if REGISTRY is None:
        return lambda: None
    collector = EventBusCollector(pipeline)
    REGISTRY.register(collector)
    return lambda: REGISTRY.unregister(collector)
