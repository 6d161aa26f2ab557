"""An OTLP/HTTP receiver for tests: decodes what it gets with opentelemetry-proto.

It takes ``/v1/traces`` and ``/v1/logs`` as protobuf or OTLP JSON, gzipped or
not, answers from a script of responses (then 200), and keeps every request
decoded, as an OpenTelemetry Collector's OTLP receiver would read it.
"""

from __future__ import annotations

import base64
import gzip
import json
import threading
from collections import deque
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from google.protobuf.json_format import Parse
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

_ID_FIELDS = {"traceId", "spanId", "parentSpanId"}


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    message: Any
    body: bytes
    """The request body as sent (compressed if it was)."""
    json_ids: list[str]
    """The trace and span ids as they were written, for a JSON request."""


class OtlpReceiver:
    """``with OtlpReceiver() as receiver:`` then point an exporter at ``receiver.endpoint``."""

    def __init__(self) -> None:
        self.received: list[Received] = []
        self.script: deque[tuple[int, dict[str, str], bytes]] = deque()
        self.answered: list[tuple[float, int]] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                import time

                length = int(self.headers.get("content-length", 0))
                body = self.rfile.read(length)
                with receiver.lock:
                    status, headers, answer = (
                        receiver.script.popleft() if receiver.script else (200, {}, b"")
                    )
                    receiver.answered.append((time.monotonic(), status))
                if status == 200:
                    receiver._keep(self.path, dict(self.headers.items()), body)
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("content-length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> OtlpReceiver:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _keep(self, path: str, headers: dict[str, str], body: bytes) -> None:
        raw = body
        lowered = {name.lower(): value for name, value in headers.items()}
        if lowered.get("content-encoding") == "gzip":
            raw = gzip.decompress(body)
        message: Any = (
            ExportTraceServiceRequest() if path == "/v1/traces" else ExportLogsServiceRequest()
        )
        ids: list[str] = []
        if lowered.get("content-type") == "application/json":
            document = json.loads(raw)
            Parse(json.dumps(_base64_ids(document, ids)), message)
        else:
            message.ParseFromString(raw)
        with self.lock:
            self.received.append(Received(path, lowered, message, body, ids))

    # ---- what tests look at

    def spans(self) -> list[tuple[dict[str, Any], Any]]:
        """Every span received, with its resource's attributes."""
        found = []
        with self.lock:
            for item in self.received:
                if item.path != "/v1/traces":
                    continue
                for resource_spans in item.message.resource_spans:
                    resource = attribute_dict(resource_spans.resource.attributes)
                    for scope in resource_spans.scope_spans:
                        found.extend((resource, span) for span in scope.spans)
        return found

    def log_records(self) -> list[Any]:
        with self.lock:
            return [
                record
                for item in self.received
                if item.path == "/v1/logs"
                for resource_logs in item.message.resource_logs
                for scope in resource_logs.scope_logs
                for record in scope.log_records
            ]

    def answer_next(
        self, status: int, headers: dict[str, str] | None = None, body: bytes = b""
    ) -> None:
        with self.lock:
            self.script.append((status, headers or {}, body))


def partial_success(rejected: int, message: str) -> bytes:
    answer = ExportTraceServiceResponse()
    answer.partial_success.rejected_spans = rejected
    answer.partial_success.error_message = message
    return answer.SerializeToString()


def attribute_dict(attributes: Any) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for item in attributes:
        kind = item.value.WhichOneof("value")
        value = getattr(item.value, kind) if kind else None
        if kind == "array_value":
            value = [getattr(v, v.WhichOneof("value")) for v in value.values]
        values[item.key] = value
    return values


def _base64_ids(value: Any, seen: list[str]) -> Any:
    if isinstance(value, dict):
        converted = {}
        for key, item in value.items():
            if key in _ID_FIELDS and isinstance(item, str):
                seen.append(item)
                converted[key] = base64.b64encode(bytes.fromhex(item)).decode()
            else:
                converted[key] = _base64_ids(item, seen)
        return converted
    if isinstance(value, list):
        return [_base64_ids(item, seen) for item in value]
    return value
