"""Sending spans and log records over OTLP/HTTP, as the OTLP specification asks.

Requests are ``ExportTraceServiceRequest``/``ExportLogsServiceRequest``
messages of the official ``opentelemetry-proto`` package, as protobuf
(``http/protobuf``, the default) or as OTLP JSON (``http/json``: ids in hex,
enums as numbers), gzip-compressed unless ``compression`` is ``none``.
Answers: 2xx is success (a ``partial_success`` in it is counted and
returned); 429, 502, 503 and 504 ask to retry, no sooner than their
``Retry-After`` (:class:`OtlpRetry`); every other answer refuses the request
for good (:class:`OtlpRefused`).
"""

from __future__ import annotations

import base64
import gzip
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

import httpx
from google.protobuf.json_format import MessageToDict
from google.protobuf.message import DecodeError, Message
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
    ExportLogsServiceRequest,
    ExportLogsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import InstrumentationScope
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from .._version import __version__
from ..bindings.http import retry_after
from .mapping import add_attributes

RETRYABLE = frozenset({429, 502, 503, 504})
PROTOCOLS = ("http/protobuf", "http/json")
COMPRESSIONS = ("gzip", "none")
DEFAULT_ENDPOINT = "http://localhost:4318"
SCOPE = InstrumentationScope(name="dask_eventbus", version=__version__)
_ID_FIELDS = frozenset({"traceId", "spanId", "parentSpanId"})


class OtlpRetry(Exception):
    """The receiver asks to send again later (429, 502, 503, 504, or no answer)."""

    def __init__(self, text: str, retry_after: float | None = None) -> None:
        super().__init__(text)
        self.retry_after = retry_after
        """Seconds the receiver asked to wait (``Retry-After``)."""


class OtlpRefused(Exception):
    """The receiver refused a request for good (any other 4xx or 5xx)."""


@dataclass(frozen=True)
class ExportSettings:
    """Where and how to send; :func:`settings_from_environment` fills the defaults."""

    traces_endpoint: str
    logs_endpoint: str
    headers: Mapping[str, str]
    protocol: str = "http/protobuf"
    compression: str = "gzip"
    timeout: float = 10.0
    verify: Any = True


def environment_headers(text: str | None) -> dict[str, str]:
    """``OTEL_EXPORTER_OTLP_HEADERS``: ``key1=value1,key2=value2``, URL-encoded."""
    headers = {}
    for pair in (text or "").split(","):
        name, equals, value = pair.partition("=")
        if equals and name.strip():
            headers[unquote(name.strip()).lower()] = unquote(value.strip())
    return headers


def signal_endpoint(base: str, signal: str) -> str:
    """``OTEL_EXPORTER_OTLP_ENDPOINT`` semantics: the base URL plus ``/v1/<signal>``."""
    return base.rstrip("/") + f"/v1/{signal}"


def settings_from_environment(
    *,
    endpoint: str | None = None,
    traces_endpoint: str | None = None,
    logs_endpoint: str | None = None,
    headers: Mapping[str, str] | None = None,
    protocol: str | None = None,
    compression: str | None = None,
    timeout: float | None = None,
    verify: Any = True,
    environ: Mapping[str, str] = os.environ,
) -> ExportSettings:
    """Settings from what is given, else the ``OTEL_EXPORTER_OTLP_*`` variables.

    A per-signal endpoint is used as it is; the base endpoint gets
    ``/v1/traces`` and ``/v1/logs`` appended, as the OTel exporters do.
    """
    base = endpoint or environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or DEFAULT_ENDPOINT
    traces = (
        traces_endpoint
        or (None if endpoint else environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
        or signal_endpoint(base, "traces")
    )
    logs = (
        logs_endpoint
        or (None if endpoint else environ.get("OTEL_EXPORTER_OTLP_LOGS_ENDPOINT"))
        or signal_endpoint(base, "logs")
    )
    for url in (traces, logs):
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(
                f"an OTLP/HTTP endpoint must be an http:// or https:// URL, got {url!r}"
            )
    chosen_protocol = protocol or environ.get("OTEL_EXPORTER_OTLP_PROTOCOL") or PROTOCOLS[0]
    if chosen_protocol not in PROTOCOLS:
        raise ValueError(
            f"protocol {chosen_protocol!r} is not supported; use one of {', '.join(PROTOCOLS)} "
            "(gRPC is not: point it at the collector's OTLP/HTTP port, 4318)"
        )
    chosen_compression = compression or environ.get("OTEL_EXPORTER_OTLP_COMPRESSION") or "gzip"
    if chosen_compression not in COMPRESSIONS:
        raise ValueError(f"compression {chosen_compression!r} is not supported; use gzip or none")
    seconds = timeout
    if seconds is None and environ.get("OTEL_EXPORTER_OTLP_TIMEOUT"):
        seconds = float(environ["OTEL_EXPORTER_OTLP_TIMEOUT"]) / 1000  # milliseconds
    return ExportSettings(
        traces_endpoint=traces,
        logs_endpoint=logs,
        headers={
            **environment_headers(environ.get("OTEL_EXPORTER_OTLP_HEADERS")),
            **(headers or {}),
        },
        protocol=chosen_protocol,
        compression=chosen_compression,
        timeout=seconds if seconds is not None else 10.0,
        verify=verify,
    )


def resource_attributes(
    found: Mapping[str, Any],
    service_name: str | None = None,
    environ: Mapping[str, str] = os.environ,
) -> dict[str, Any]:
    """A source's resource: ``OTEL_RESOURCE_ATTRIBUTES``, then what its events say,
    then ``service.name`` (given, ``OTEL_SERVICE_NAME``, or ``dask``)."""
    merged: dict[str, Any] = environment_headers(environ.get("OTEL_RESOURCE_ATTRIBUTES"))
    merged.update({key: value for key, value in found.items() if value is not None})
    merged["service.name"] = service_name or environ.get("OTEL_SERVICE_NAME") or "dask"
    return merged


def trace_request(
    batches: Sequence[tuple[dict[str, Any], Sequence[Span]]],
) -> ExportTraceServiceRequest:
    """One request of spans grouped by resource."""
    request = ExportTraceServiceRequest()
    for resource, spans in batches:
        if spans:
            resource_spans = request.resource_spans.add()
            add_attributes(resource_spans.resource.attributes, resource)
            resource_spans.scope_spans.add(scope=SCOPE, spans=spans)
    return request


def logs_request(
    batches: Sequence[tuple[dict[str, Any], Sequence[LogRecord]]],
) -> ExportLogsServiceRequest:
    """One request of log records grouped by resource."""
    request = ExportLogsServiceRequest()
    for resource, records in batches:
        if records:
            resource_logs = request.resource_logs.add()
            add_attributes(resource_logs.resource.attributes, resource)
            resource_logs.scope_logs.add(scope=SCOPE, log_records=records)
    return request


def otlp_json(message: Message) -> bytes:
    """OTLP JSON: protobuf's JSON mapping, with trace and span ids in hex as OTLP asks."""
    import json

    return json.dumps(_hex_ids(MessageToDict(message)), separators=(",", ":")).encode()


def _hex_ids(value: Any) -> Any:
    if isinstance(value, dict):
        return {
            key: base64.b64decode(item).hex() if key in _ID_FIELDS else _hex_ids(item)
            for key, item in value.items()
        }
    if isinstance(value, list):
        return [_hex_ids(item) for item in value]
    return value


class OtlpSender:
    """One keep-alive HTTP client posting OTLP requests."""

    def __init__(self, settings: ExportSettings) -> None:
        self.settings = settings
        self._client = httpx.Client(
            headers=dict(settings.headers),
            timeout=settings.timeout,
            verify=settings.verify,
            follow_redirects=False,
            limits=httpx.Limits(max_connections=1, max_keepalive_connections=1),
        )

    def send(self, request: Message) -> tuple[int, str]:
        """Post one request; ``(rejected, error message)`` of a partial success.

        Raises :class:`OtlpRetry` or :class:`OtlpRefused`; httpx's transport
        errors pass as they are (a connection refused is worth a retry too).
        """
        settings = self.settings
        traces = isinstance(request, ExportTraceServiceRequest)
        url = settings.traces_endpoint if traces else settings.logs_endpoint
        json_protocol = settings.protocol == "http/json"
        body = otlp_json(request) if json_protocol else request.SerializeToString()
        headers = {
            "content-type": "application/json" if json_protocol else "application/x-protobuf"
        }
        if settings.compression == "gzip":
            body = gzip.compress(body, compresslevel=1)
            headers["content-encoding"] = "gzip"
        response = self._client.post(url, content=body, headers=headers)
        status = response.status_code
        if 200 <= status < 300:
            return _partial_success(response, traces, json_protocol)
        answer = f"HTTP {status} from {url}: {' '.join(response.text.split())[:200]}"
        if status in RETRYABLE:
            raise OtlpRetry(answer, retry_after(response.headers.get("retry-after")))
        raise OtlpRefused(answer)

    def close(self) -> None:
        self._client.close()


def _partial_success(
    response: httpx.Response, traces: bool, json_protocol: bool
) -> tuple[int, str]:
    if not response.content:
        return 0, ""
    if json_protocol or response.headers.get("content-type", "").startswith("application/json"):
        try:
            partial = response.json().get("partialSuccess") or {}
        except ValueError:
            return 0, ""
        rejected = partial.get("rejectedSpans" if traces else "rejectedLogRecords") or 0
        return int(rejected), str(partial.get("errorMessage") or "")
    answer = ExportTraceServiceResponse() if traces else ExportLogsServiceResponse()
    try:
        answer.ParseFromString(response.content)
    except DecodeError:
        return 0, ""
    partial = answer.partial_success
    rejected = partial.rejected_spans if traces else partial.rejected_log_records  # type: ignore[union-attr]
    return int(rejected), partial.error_message
