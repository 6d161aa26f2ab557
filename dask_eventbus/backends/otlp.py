"""``otlp``: every computation as an OpenTelemetry trace, sent over OTLP/HTTP.

The backend maps events to spans and log records where it runs: in the
publisher process (the default), never on the scheduler's event loop. A
trace is sent as its tasks finish, its root when the last one did; see
:mod:`dask_eventbus.otel.mapping` for the mapping and
:mod:`dask_eventbus.otel.export` for the requests.

Delivery follows the OTLP specification: 429, 502, 503, 504 and connection
errors fail the publish so that the pipeline retries it, no sooner than the
answer's ``Retry-After`` (the requests already built wait in an outbox and
the events are not mapped twice); any other error answer refuses the
request for good, reported with :class:`~dask_eventbus.backends.Refused`.
A partial success is counted and logged.

Publish-only: read the traces in the tracing system.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import httpx
import msgspec

from ..config import ConfigError, PositiveDuration, redact_url
from . import Backend, BackendOptions, Message, Refused
from .diagnosis import Problem
from .tls import TLSOptions

logger = logging.getLogger("distributed.eventbus")


class OtlpOptions(BackendOptions):
    """Options of the ``otlp`` backend (``eventbus.backends.otlp``).

    Unset (null) options take the OTel exporter's environment variables
    (``OTEL_EXPORTER_OTLP_ENDPOINT``, ``..._TRACES_ENDPOINT``,
    ``..._LOGS_ENDPOINT``, ``..._HEADERS``, ``..._PROTOCOL``,
    ``..._COMPRESSION``, ``..._TIMEOUT``, ``OTEL_SERVICE_NAME``), then the
    OTel defaults.
    """

    endpoint: str | None = None
    traces_endpoint: str | None = None
    logs_endpoint: str | None = None
    headers: dict[str, str] = {}
    protocol: Literal["http/protobuf", "http/json"] | None = None
    compression: Literal["gzip", "none"] | None = None
    timeout: PositiveDuration | None = None
    tls: TLSOptions | None = None
    service_name: str | None = None
    max_spans_per_trace: Annotated[int, msgspec.Meta(ge=10)] = 10_000
    max_links_per_span: Annotated[int, msgspec.Meta(ge=0)] = 128

    def __post_init__(self) -> None:
        self.export_settings()  # bad endpoints are refused when the options are made
        if self.tls is not None:
            self.tls.refuse("httpx", "server-hostname")

    def export_settings(self) -> Any:
        from ..otel.export import settings_from_environment

        return settings_from_environment(
            endpoint=self.endpoint,
            traces_endpoint=self.traces_endpoint,
            logs_endpoint=self.logs_endpoint,
            headers=self.headers,
            protocol=self.protocol,
            compression=self.compression,
            timeout=None if self.timeout is None else float(self.timeout),
            verify=True if self.tls is None else self.tls.context(),
        )


class OtlpBackend(Backend):
    """Sends traces of the computations, and log records, to an OTLP/HTTP receiver."""

    name = "otlp"
    Options = OtlpOptions
    options: OtlpOptions

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self._export: Any = None

    def check(self) -> None:
        try:
            import opentelemetry.proto  # noqa: F401
        except ImportError:
            raise ConfigError(
                "the otlp backend needs opentelemetry-proto: pip install 'dask-eventbus[otlp]'"
            ) from None

    def open(self) -> None:
        from ..otel.mapping import TraceSettings
        from ..otel.pipeline import OtelExport

        if self._export is not None:
            self._export.connect()  # the traces in progress and the outbox carry over
            return
        self._export = OtelExport(
            self.options.export_settings(),
            trace_settings=TraceSettings(
                max_spans_per_trace=self.options.max_spans_per_trace,
                max_links_per_span=self.options.max_links_per_span,
            ),
            service_name=self.options.service_name,
        )

    def send(self, messages: Sequence[Message]) -> None:
        """Map ``messages`` whatever the content mode: the mapping reads events, not bodies."""
        if messages:
            self.publish(messages)

    def publish(self, messages: Sequence[Message]) -> None:
        export = self._export
        if export is None:
            raise RuntimeError("otlp backend is not open")
        for message in messages:
            export.take(message.body)  # a retried batch: known events are skipped
        export.collect()
        refused_before = export.counts.refused_requests
        export.flush()
        if export.counts.refused_requests > refused_before:
            raise Refused(list(messages), export.counts.refusals[-1])

    def close(self) -> None:
        # Only the connection: the pipeline also closes the backend after a
        # failed publish, and the traces in progress must outlive that. A
        # scheduler's closing event has already ended its traces.
        if self._export is not None:
            self._export.sender.close()

    def abort(self) -> None:
        self.close()

    def describe(self) -> str:
        settings = self.options.export_settings()
        return f"otlp {redact_url(settings.traces_endpoint)}"

    def broker(self) -> str:
        parts = urlsplit(self.options.export_settings().traces_endpoint)
        port = parts.port or (443 if parts.scheme == "https" else 80)
        return f"the OTLP receiver at {parts.hostname}:{port}"

    def classify(self, exc: BaseException) -> Problem | None:
        from ..otel.export import OtlpRetry

        if isinstance(exc, Refused):
            return Problem(
                "refused", exc.reason, f"{len(exc.messages)} events for good (not retried)"
            )
        if isinstance(exc, OtlpRetry):
            wait = f" (Retry-After {exc.retry_after:g}s)" if exc.retry_after is not None else ""
            return Problem("refused", str(exc), f"the request{wait}", "it is busy or unavailable")
        detail = f"{type(exc).__name__}: {exc}"
        if isinstance(exc, httpx.TimeoutException):
            return Problem("timeout", detail, fix="raise eventbus.backends.otlp.timeout?")
        if isinstance(exc, httpx.ConnectError):
            fix = "is the collector running, and the endpoint its OTLP/HTTP port (4318)?"
            return Problem("connect", detail, fix=fix)
        if isinstance(exc, httpx.TransportError):
            return Problem("lost", detail)
        return None
