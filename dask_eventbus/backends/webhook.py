"""``webhook``: CloudEvents over HTTP ``POST`` to any receiver, with httpx.

Structured content mode posts one event per request; batched content mode
posts a JSON array of events per request, at most ``max-batch-bytes`` each.
Requests are signed as Standard Webhooks defines when a ``secret`` is set
(see :mod:`dask_eventbus.bindings.http`). One keep-alive connection carries
them all, over HTTP/2 if asked.

A 2xx answer acknowledges a request. 408, 429, 5xx and connection errors
fail the publish so that the pipeline retries it, no sooner than the
answer's ``Retry-After``; a retried batch resumes after the requests already
answered. A 413 answer halves the request (and the size of later ones) until
a single event is still too large. Any other 4xx answer refuses its events
for good: they are reported with :class:`~dask_eventbus.backends.Refused`
once the rest of the batch went through.

Publish-only: what the receiver does with the events is its own business.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Annotated, Any
from urllib.parse import urlsplit
from urllib.request import getproxies

import httpx
import msgspec

from ..bindings.http import request, request_end, retry_after, retryable, signing_key
from ..config import ConfigError, redact_url
from .contract import Backend, Message, NetworkOptions, Refused, url_scheme
from .diagnosis import Problem
from .tls import TLSOptions

logger = logging.getLogger("distributed.eventbus")

# Headers the backend sets itself on every request.
RESERVED_HEADERS = frozenset(
    {
        "content-type",
        "content-length",
        "host",
        "webhook-id",
        "webhook-timestamp",
        "webhook-signature",
    }
)
# How much of a receiver's answer goes into logs and errors.
ANSWER_CHARS = 200


class WebhookOptions(NetworkOptions):
    """Options of the ``webhook`` backend (``eventbus.backends.webhook``)."""

    aliases = {"timeout": ("connect-timeout", "publish-timeout")}

    url: str = "http://localhost:8080/"
    headers: dict[str, str] = {}
    secret: str | None = None
    max_batch_bytes: Annotated[int, msgspec.Meta(ge=1)] = 1_000_000
    http2: bool = False
    tls: TLSOptions | None = None

    def __post_init__(self) -> None:
        scheme = url_scheme(self.url, ("http", "https"), tls=("https",))
        if not urlsplit(self.url).hostname:
            raise ValueError(f"url must name a host, got {redact_url(self.url)!r}")
        if self.tls is not None:
            if scheme != "https":
                raise ValueError("tls needs an https:// url")
            self.tls.refuse("httpx", "server-hostname")
        reserved = sorted(name for name in self.headers if name.lower() in RESERVED_HEADERS)
        if reserved:
            raise ValueError(
                f"headers may not set {', '.join(reserved)}: the backend sets "
                f"{', '.join(sorted(RESERVED_HEADERS))} itself"
            )
        if self.secret is not None:
            signing_key(self.secret)


class WebhookError(Exception):
    """A receiver's answer that asks to try again later (408, 429, 5xx, or
    an unexpected 1xx/3xx)."""

    def __init__(self, status: int, text: str, retry_after: float | None) -> None:
        super().__init__(text)
        self.status = status
        self.retry_after = retry_after
        """Seconds the receiver asked to wait (``Retry-After``); the publisher honours it."""


class WebhookBackend(Backend):
    """Posts events to an HTTP endpoint as CloudEvents."""

    name = "webhook"
    Options = WebhookOptions
    options: WebhookOptions

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        secret = self.options.secret
        self._key = signing_key(secret) if secret is not None else None
        self._client: httpx.Client | None = None
        self._max_bytes = self.options.max_batch_bytes
        # A retried batch resumes where the last attempt stopped: (first id,
        # last id, length) of the batch, events settled, events refused.
        self._progress: tuple[tuple[str, str, int], int, list[Message], str] | None = None
        parts = urlsplit(self.options.url)
        port = parts.port or (443 if parts.scheme.lower() == "https" else 80)
        self._where = f"{parts.hostname}:{port}"

    def check(self) -> None:
        if self.options.http2:
            try:
                import h2  # noqa: F401
            except ImportError:
                raise ConfigError(
                    "eventbus.backends.webhook.http2 needs the h2 package: "
                    "pip install 'httpx[http2]'"
                ) from None

    # ------------------------------------------------------------ producer

    def open(self) -> None:
        self.close()
        options = self.options
        verify: Any = True
        if options.tls is not None:
            verify = options.tls.context()
        elif not self._tls_possible():
            # Nothing to verify, and loading the certificate store took 20 ms
            # of every open, which a scheduler's close waits for.
            verify = False
        self._client = httpx.Client(
            headers=options.headers,
            timeout=httpx.Timeout(options.publish_timeout, connect=options.connect_timeout),
            verify=verify,
            http2=options.http2,
            follow_redirects=False,
            limits=httpx.Limits(max_connections=1, max_keepalive_connections=1),
        )

    def _tls_possible(self) -> bool:
        """Whether the client may speak TLS: to an https:// url, or to a proxy
        from the environment (the client follows no redirects)."""
        if urlsplit(self.options.url).scheme.lower() == "https":
            return True
        proxies = getproxies()
        return bool(proxies.get("http") or proxies.get("all"))

    def send(self, messages: Sequence[Message]) -> None:
        """Publish ``messages``: this backend applies the content mode itself,
        to keep batches within ``max-batch-bytes`` and split them on a 413."""
        if messages:
            self.publish(messages)

    def publish(self, messages: Sequence[Message]) -> None:
        """Post ``messages`` (one event each) in the configured content mode."""
        client = self._client
        if client is None:
            raise RuntimeError("webhook backend is not open")
        if not messages:
            return
        batch = (messages[0].id, messages[-1].id, len(messages))
        settled, reason = 0, ""
        refused: list[Message] = []
        if self._progress is not None and self._progress[0] == batch:
            _, settled, refused, reason = self._progress
        self._progress = None
        batched = self.options.content_mode == "batched"
        while settled < len(messages):
            end = request_end(messages, settled, batched=batched, max_bytes=self._max_bytes)
            chunk = messages[settled:end]
            made = request(chunk, batched=batched, key=self._key)
            try:
                response = client.post(self.options.url, content=made.body, headers=made.headers)
            except BaseException:
                self._progress = (batch, settled, refused, reason)
                raise
            status = response.status_code
            if 200 <= status < 300:
                settled = end
                continue
            answer = f"HTTP {status} {response.reason_phrase} from {self.destination()}"
            text = _answer_text(response)
            if text:
                answer += f": {text}"
            answer = self.mask(answer)
            if status == 413 and len(chunk) > 1:
                self._max_bytes = max(1, len(made.body) // 2)
                logger.warning(
                    "dask-eventbus: %s; sending requests of at most %d bytes from now on "
                    "(eventbus.backends.webhook.max-batch-bytes is %d)",
                    answer,
                    self._max_bytes,
                    self.options.max_batch_bytes,
                )
                continue
            if status >= 400 and not retryable(status):
                refused.extend(chunk)
                reason = answer
                settled = end
                continue
            self._progress = (batch, settled, refused, reason)
            raise WebhookError(status, answer, retry_after(response.headers.get("retry-after")))
        if refused:
            raise Refused(refused, reason)

    def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            try:
                client.close()
            except Exception:
                logger.debug("dask-eventbus: closing the HTTP client failed", exc_info=True)

    def abort(self) -> None:
        client = self._client
        if client is not None:
            try:
                client.close()
            except Exception:
                logger.debug("dask-eventbus: aborting the HTTP client failed", exc_info=True)

    # ------------------------------------------------------------ for people

    def describe(self) -> str:
        return f"webhook {redact_url(self.options.url)}"

    def broker(self) -> str:
        return f"the webhook receiver at {self._where}"

    def classify(self, exc: BaseException) -> Problem | None:
        if isinstance(exc, Refused):
            return Problem(
                "refused", exc.reason, f"{len(exc.messages)} events for good (not retried)"
            )
        if isinstance(exc, WebhookError):
            wait = f" (Retry-After {exc.retry_after:g}s)" if exc.retry_after is not None else ""
            if exc.status == 429:
                return Problem("refused", str(exc), f"the request{wait}", "it asks to slow down")
            if exc.status >= 500:
                return Problem(
                    "refused", str(exc), f"the request{wait}", "it failed or is unavailable"
                )
            if exc.status == 408:
                return Problem("timeout", str(exc), fix="it timed out reading the request")
            fix = (
                "it answered with neither success nor an error: point "
                "eventbus.backends.webhook.url at the final address (redirects are not followed)"
            )
            return Problem("refused", str(exc), fix=fix)
        detail = f"{type(exc).__name__}: {exc}"
        if isinstance(exc, httpx.TimeoutException):
            return Problem("timeout", detail)
        if isinstance(exc, httpx.ConnectError):
            return Problem("connect", detail)
        if isinstance(exc, httpx.TransportError):
            return Problem("lost", detail)
        return None


def _answer_text(response: httpx.Response) -> str:
    """The first part of a receiver's answer, on one line."""
    try:
        text = response.text
    except Exception:
        return ""
    text = " ".join(text.split())
    return text[:ANSWER_CHARS] + ("..." if len(text) > ANSWER_CHARS else "")
