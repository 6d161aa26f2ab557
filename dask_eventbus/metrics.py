"""Prometheus metrics of the event bus, on the scheduler's own ``/metrics``.

distributed serves ``prometheus_client``'s default registry at the
dashboard's ``/metrics``. One collector per process (registered the first time
a plugin starts, when ``prometheus_client`` is installed) reports every
running pipeline, summed by backend name: labels stay low-cardinality, and a
second scheduler in the same process adds to the same series.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import dask.config

from .buffer import Pipeline
from .stats import DELIVERY_SECONDS, PUBLISH_SECONDS, Histogram

try:
    from prometheus_client import REGISTRY
    from prometheus_client.core import (
        CounterMetricFamily,
        GaugeMetricFamily,
        HistogramMetricFamily,
    )
except ImportError:  # metrics are optional, like distributed's own
    REGISTRY = None  # type: ignore[assignment]

logger = logging.getLogger("distributed.eventbus")

_pipelines: weakref.WeakSet[Pipeline] = weakref.WeakSet()
_registered = False
_lock = threading.Lock()


class EventBusCollector:
    """Reads the statistics of every live pipeline whenever Prometheus scrapes."""

    def collect(self) -> Iterator[Any]:
        namespace = dask.config.get("distributed.dashboard.prometheus.namespace", "dask")
        prefix = f"{namespace}_eventbus_" if namespace else "eventbus_"
        by_backend: dict[str, list[Pipeline]] = {}
        for pipeline in list(_pipelines):
            by_backend.setdefault(pipeline.backend.name, []).append(pipeline)

        def family(kind: Any, name: str, doc: str) -> Any:
            return kind(prefix + name, doc, labels=["backend"])

        def summed(kind: Any, name: str, doc: str, value: Callable[[Pipeline], float]) -> Any:
            metric = family(kind, name, doc)
            for backend, pipelines in by_backend.items():
                metric.add_metric([backend], sum(value(p) for p in pipelines))
            return metric

        def histogram(name: str, doc: str, bounds: tuple[float, ...], attr: str) -> Any:
            metric = family(HistogramMetricFamily, name, doc)
            for backend, pipelines in by_backend.items():
                total = Histogram(bounds)
                for p in pipelines:
                    total.add(*getattr(p.sink.stats, attr).state())
                cumulative, buckets = 0, []
                for bound, count in zip([*bounds, float("inf")], total.counts, strict=True):
                    cumulative += count
                    buckets.append(("+Inf" if bound == float("inf") else repr(bound), cumulative))
                metric.add_metric([backend], buckets, total.total)
            return metric

        counter, gauge = CounterMetricFamily, GaugeMetricFamily
        yield summed(
            counter, "events_published", "Events the broker acknowledged.",
            lambda p: p.sink.stats.published,
        )  # fmt: skip
        yield summed(
            counter, "events_dropped", "Events dropped because the queue was full.",
            lambda p: p.dropped_so_far(),
        )  # fmt: skip
        yield summed(
            counter, "events_oversized",
            "Events published as dask.eventbus.oversized in place of larger ones.",
            lambda p: p.sink.stats.oversized,
        )  # fmt: skip
        yield summed(
            counter, "events_refused", "Events the broker refused for good (not retried).",
            lambda p: p.sink.stats.refused,
        )  # fmt: skip
        yield summed(
            counter, "publish_retries", "Publishes retried after a failure.",
            lambda p: p.sink.stats.retries,
        )  # fmt: skip
        yield summed(
            counter, "publish_errors", "Failed attempts to publish a batch.",
            lambda p: p.sink.stats.publish_errors,
        )  # fmt: skip
        yield summed(
            gauge, "queue_events", "Events captured and not yet acknowledged.",
            lambda p: p.queued(),
        )  # fmt: skip
        yield summed(
            gauge, "queue_capacity_events", "eventbus.queue.max-events.",
            lambda p: p.max_events,
        )  # fmt: skip
        yield summed(
            gauge, "backend_connected", "Pipelines whose last publish succeeded.",
            lambda p: int(p.sink.stats.connected),
        )  # fmt: skip
        yield from _spool_metrics(family, by_backend)
        yield histogram(
            "publish_duration_seconds", "Time to publish one batch.",
            PUBLISH_SECONDS, "publish_seconds",
        )  # fmt: skip
        yield histogram(
            "delivery_latency_seconds",
            "Per event, from the scheduler seeing it to the broker acknowledging it.",
            DELIVERY_SECONDS, "delivery_seconds",
        )  # fmt: skip


def _spool_metrics(family: Callable[..., Any], by_backend: dict[str, list[Pipeline]]) -> Any:
    """The spool's figures, for pipelines that have one."""
    spooled = {
        backend: [s for s in (p.sink.stats.spool for p in pipelines) if s is not None]
        for backend, pipelines in by_backend.items()
    }
    now = time.time()

    def age(spool: dict[str, Any]) -> float:
        oldest = spool["oldest_event_time"]
        return max(0.0, now - oldest) if oldest is not None else 0.0

    gauge, counter = GaugeMetricFamily, CounterMetricFamily
    Figure = Callable[[dict[str, Any]], float]
    figures: list[tuple[Any, str, str, Figure, Callable[[Iterator[float]], float]]] = [
        (gauge, "spool_bytes", "Bytes of spool segments on disk.",
         lambda s: s["bytes"], sum),
        (gauge, "spool_events", "Undelivered events in the spool.",
         lambda s: s["events"], sum),
        (gauge, "spool_oldest_event_age_seconds",
         "Age of the oldest undelivered event in the spool.", age, max),
        (counter, "spool_quarantined_records",
         "Damaged spool records moved to its quarantine directory.",
         lambda s: s["quarantined_parts"], sum),
    ]  # fmt: skip
    for kind, name, doc, value, combine in figures:
        metric = family(kind, name, doc)
        for backend, spools in spooled.items():
            if spools:
                metric.add_metric([backend], combine(map(value, spools)))
        yield metric


def export(pipeline: Pipeline) -> None:
    """Report the pipeline's metrics while it lives; never raises."""
    global _registered
    if REGISTRY is None:
        return
    _pipelines.add(pipeline)
    with _lock:
        if _registered:
            return
        try:
            REGISTRY.register(EventBusCollector())
            _registered = True
        except Exception:
            logger.warning("dask-eventbus: cannot export Prometheus metrics", exc_info=True)


def unexport(pipeline: Pipeline) -> None:
    _pipelines.discard(pipeline)
