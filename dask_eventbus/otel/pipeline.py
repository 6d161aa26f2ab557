"""Events in, OTLP requests out: what the ``otlp`` backend and ``dask-eventbus otel`` share.

Bodies go through the shared reader (decoding, checking, dropping
redeliveries) to one :class:`~.mapping.TraceMapper` per scheduler run; what
the mappers complete is packed into requests that wait in an outbox until
the receiver took them, so a retry after an outage resends exactly those.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from ..consume.reader import EventReader, run_of
from ..events import DROPPED, Event
from .export import (
    ExportSettings,
    OtlpRefused,
    OtlpSender,
    logs_request,
    resource_attributes,
    trace_request,
)
from .mapping import TraceMapper, TraceSettings

logger = logging.getLogger("distributed.eventbus")


def _refusal(event: Event) -> bool:
    # The pipeline announces events the receiver refused under the number of
    # the last of them, which this export has read already: shown all the same.
    return (
        event.type == DROPPED
        and isinstance(event.data, dict)
        and (event.data.get("policy") == "refused")
    )


SPANS_PER_REQUEST = 2000
"""Spans (or log records) per OTLP request at most, as the OTel SDK batches them."""


@dataclass
class ExportCounts:
    """What went out, and what the receiver did not take."""

    spans: int = 0
    logs: int = 0
    task_runs: int = 0
    requests: int = 0
    rejected_spans: int = 0
    rejected_logs: int = 0
    refused_requests: int = 0
    refusals: list[str] = field(default_factory=list)


class OtelExport:
    """Folds events into traces and sends what completes."""

    def __init__(
        self,
        settings: ExportSettings,
        *,
        trace_settings: TraceSettings | None = None,
        service_name: str | None = None,
        reader: EventReader | None = None,
        warn: Callable[[str], None] | None = None,
    ) -> None:
        self.trace_settings = trace_settings or TraceSettings()
        self.service_name = service_name
        self.reader = reader or EventReader(warn=warn, consumer="the OTLP export")
        self.settings = settings
        self.sender = OtlpSender(settings)
        self.counts = ExportCounts()
        self.outbox: deque[ExportTraceServiceRequest | ExportLogsServiceRequest] = deque()
        self._mappers: dict[tuple[str, str], TraceMapper] = {}

    def take(self, body: bytes) -> None:
        """Fold one message body (an event or a batch of them)."""
        for event in self.reader.events(body, refolded=_refusal):
            self.take_event(event)

    def take_event(self, event: Event) -> None:
        run = run_of(event)
        mapper = self._mappers.get((event.source, run))
        if mapper is None:
            mapper = self._mappers[(event.source, run)] = TraceMapper(
                event.source, run, self.trace_settings
            )
        try:
            mapper.take(event)
        except (KeyError, TypeError, ValueError) as exc:
            self.reader.skip("not_cloudevent", f"a {event.type} event whose data lacks {exc}")

    def finish(self) -> None:
        """End every open trace (the end of a replay, or closing without a closing event)."""
        for mapper in self._mappers.values():
            mapper.finish()
        self.collect()

    def collect(self) -> None:
        """Pack what the mappers completed into requests in the outbox."""
        span_batches, log_batches = [], []
        for key, mapper in list(self._mappers.items()):
            spans, logs = mapper.drain()
            resource = resource_attributes(mapper.resource, self.service_name)
            for start in range(0, len(spans), SPANS_PER_REQUEST):
                span_batches.append((resource, spans[start : start + SPANS_PER_REQUEST]))
            for start in range(0, len(logs), SPANS_PER_REQUEST):
                log_batches.append((resource, logs[start : start + SPANS_PER_REQUEST]))
            self.counts.task_runs += mapper.task_runs
            mapper.task_runs = 0
            if mapper.schedulers and all(
                info.get("closing") is not None for info in mapper.schedulers.values()
            ):
                del self._mappers[key]  # its traces all ended with the closing event
        for batch in span_batches:
            self.outbox.append(trace_request([batch]))
        for log_batch in log_batches:
            self.outbox.append(logs_request([log_batch]))

    def flush(self) -> None:
        """Send the outbox in order.

        A retryable failure (:class:`~.export.OtlpRetry`, a transport error)
        propagates with the unsent requests still in the outbox; a refused
        request is counted, logged and dropped.
        """
        while self.outbox:
            request = self.outbox[0]
            try:
                rejected, why = self.sender.send(request)
            except OtlpRefused as exc:
                self.outbox.popleft()
                self.counts.refused_requests += 1
                self.counts.refusals.append(str(exc))
                logger.warning("dask-eventbus: the OTLP receiver refused a request: %s", exc)
                continue
            self.outbox.popleft()
            self.counts.requests += 1
            spans = isinstance(request, ExportTraceServiceRequest)
            if isinstance(request, ExportTraceServiceRequest):
                self.counts.spans += sum(
                    len(s.spans) for r in request.resource_spans for s in r.scope_spans
                )
                self.counts.rejected_spans += rejected
            elif isinstance(request, ExportLogsServiceRequest):
                self.counts.logs += sum(
                    len(s.log_records) for r in request.resource_logs for s in r.scope_logs
                )
                self.counts.rejected_logs += rejected
            if rejected or why:
                logger.warning(
                    "dask-eventbus: the OTLP receiver rejected %d %s: %s",
                    rejected,
                    "spans" if spans else "log records",
                    why or "(no reason given)",
                )

    def connect(self) -> None:
        """A new connection for the sends to come (after :meth:`close`)."""
        self.sender.close()
        self.sender = OtlpSender(self.settings)

    def close(self) -> None:
        self.sender.close()
