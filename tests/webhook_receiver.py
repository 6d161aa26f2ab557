"""A real HTTP receiver on loopback for the webhook backend's tests.

It answers each POST with a scripted status (for 429 with ``Retry-After``,
503 bursts, 400), with 413 above a body size, or stalls while told to; it
verifies Standard Webhooks signatures with the ``standardwebhooks`` library,
counts connections (keep-alive), and keeps every accepted body in a memory
store, so that subscribe("memory", name=...) reads back what arrived.
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from standardwebhooks import Webhook, WebhookVerificationError

from dask_eventbus import subscribe
from dask_eventbus.backends import Subscription
from dask_eventbus.backends.memory import drop_store, get_store
from dask_eventbus.testing import unique_name


@dataclass
class Received:
    """One request as the receiver saw it, and its answer."""

    headers: dict[str, str]
    body: bytes
    status: int
    at: float
    target: str
    """The request line's target: the path and query as sent."""


Answer = tuple[int, dict[str, str], bytes]


class WebhookReceiver:
    """A threaded HTTP/1.1 server with keep-alive; use it as a context manager."""

    def __init__(self, *, secret: str | None = None, max_body: int | None = None) -> None:
        self.verifier = Webhook(secret) if secret is not None else None
        self.max_body = max_body
        self.script: deque[Answer] = deque()
        """Answers for the next requests, in order; then 200."""
        self.answer: Callable[[bytes], Answer | None] | None = None
        """Called for each request once the script is used up; None: 200."""
        self.stalled = threading.Event()
        self.requests: list[Received] = []
        self.bad_signatures: list[str] = []
        self.connections = 0
        self.store_name = unique_name("webhook-receiver")
        self.store = get_store(self.store_name)
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/events"

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def subscribe(self, **params: Any) -> Subscription:
        """What arrived, read back (for Target.read_back)."""
        return subscribe("memory", name=self.store_name, **params)

    def events(self) -> list[dict[str, Any]]:
        """Every accepted event, in arrival order, batches unpacked."""
        events: list[dict[str, Any]] = []
        for body in list(self.store.bodies):
            document = json.loads(body)
            events.extend(document if isinstance(document, list) else [document])
        return events

    def __enter__(self) -> WebhookReceiver:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stalled.clear()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)
        drop_store(self.store_name)

    def _respond(self, headers: dict[str, str], body: bytes) -> Answer:
        if self.verifier is not None:
            try:
                self.verifier.verify(body, headers, json_parse=False)
            except WebhookVerificationError as exc:
                self.bad_signatures.append(str(exc))
                return 401, {}, b"bad signature"
        with self._lock:
            if self.script:
                return self.script.popleft()
        if self.max_body is not None and len(body) > self.max_body:
            return 413, {}, b"request entity too large"
        if self.answer is not None:
            answer = self.answer(body)
            if answer is not None:
                return answer
        return 200, {}, b""

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                super().setup()
                with receiver._lock:
                    receiver.connections += 1

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                while receiver.stalled.is_set():
                    time.sleep(0.02)
                # A header sent twice reads as both values, comma-separated (RFC 9110).
                headers = {k.lower(): ", ".join(self.headers.get_all(k)) for k in self.headers}
                status, extra, text = receiver._respond(headers, body)
                if 200 <= status < 300:
                    receiver.store.extend([body])
                with receiver._lock:
                    receiver.requests.append(
                        Received(headers, body, status, time.monotonic(), self.path)
                    )
                self.send_response(status)
                for name, value in extra.items():
                    self.send_header(name, value)
                self.send_header("content-length", str(len(text)))
                self.end_headers()
                self.wfile.write(text)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler
