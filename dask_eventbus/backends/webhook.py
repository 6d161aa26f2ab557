"""``webhook``: CloudEvents over HTTP ``POST`` to any receiver.

Structured content mode posts one event per request; batched content mode
posts a JSON array of events per request, at most ``max-batch-bytes`` each.
Requests are signed as Standard Webhooks defines when a ``secret`` is set
(see :mod:`dask_eventbus.bindings.http`). One keep-alive connection carries
them all: HTTP/1.1 with the standard library's :mod:`http.client`
(:class:`_Http1`), or httpx (:class:`_Httpx`) for HTTP/2 and where a proxy
from the environment applies. Imported, httpx would take most of a publisher
process's start (it loads its command line's rich and click, and HTTP/2's h2
where installed), while one kept-alive HTTP/1.1 connection is what almost
every receiver gets.

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

import http.client
import logging
import os
import select
import socket
import ssl
import sys
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Annotated, Any, NamedTuple, cast
from urllib.parse import quote, urlsplit

import msgspec

from .. import __version__
from ..bindings.http import request, request_end, retry_after, retryable, signing_key
from ..config import ConfigError, redact_url
from .contract import Backend, Message, NetworkOptions, Refused, url_scheme
from .tls import TLSOptions

if TYPE_CHECKING:
    from .diagnosis import Problem

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
# Environment variables naming a proxy, as httpx (and urllib) read them.
PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy")


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
        self._client: _Http1 | _Httpx | None = None
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
        if options.http2 or _proxy_in_environment():
            self._client = _Httpx(options, self._tls_possible())
        else:
            self._client = _Http1(options)

    def _tls_possible(self) -> bool:
        """Whether the client may speak TLS: to an https:// url, or to a proxy
        from the environment (the client follows no redirects)."""
        if urlsplit(self.options.url).scheme.lower() == "https":
            return True
        from urllib.request import getproxies

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
                answer = client.post(made.body, made.headers)
            except BaseException:
                self._progress = (batch, settled, refused, reason)
                raise
            status = answer.status
            if 200 <= status < 300:
                settled = end
                continue
            said = f"HTTP {status} {answer.reason} from {self.destination()}"
            text = _one_line(answer.text)
            if text:
                said += f": {text}"
            said = self.mask(said)
            if status == 413 and len(chunk) > 1:
                self._max_bytes = max(1, len(made.body) // 2)
                logger.warning(
                    "dask-eventbus: %s; sending requests of at most %d bytes from now on "
                    "(eventbus.backends.webhook.max-batch-bytes is %d)",
                    said,
                    self._max_bytes,
                    self.options.max_batch_bytes,
                )
                continue
            if status >= 400 and not retryable(status):
                refused.extend(chunk)
                reason = said
                settled = end
                continue
            self._progress = (batch, settled, refused, reason)
            raise WebhookError(status, said, retry_after(answer.retry_after))
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
                client.abort()
            except Exception:
                logger.debug("dask-eventbus: aborting the HTTP client failed", exc_info=True)

    # ------------------------------------------------------------ for people

    def describe(self) -> str:
        return f"webhook {redact_url(self.options.url)}"

    def broker(self) -> str:
        return f"the webhook receiver at {self._where}"

    def classify(self, exc: BaseException) -> Problem | None:
        from .diagnosis import Problem  # here: only an error needs it

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
        if isinstance(exc, _Unreachable):
            return Problem("connect", str(exc.__cause__ or exc))
        if isinstance(exc, TimeoutError):
            return Problem("timeout", detail)
        if isinstance(exc, OSError | http.client.HTTPException):
            return Problem("lost", detail)
        if "httpx" in sys.modules:  # the client of HTTP/2 and proxies
            return _httpx_problem(exc, detail)
        return None


class _Answer(NamedTuple):
    """A receiver's answer to one request."""

    status: int
    reason: str
    retry_after: str | None
    text: str


class _Unreachable(OSError):
    """Connecting to the receiver failed; the operating system's error is its cause."""


# What httpx (0.29) leaves as written in a url's path and in its query (it
# percent-encodes the rest, and any non-ASCII character as UTF-8), so that both
# clients send the same request target; http.client would refuse a space.
_PATH_SAFE = "".join(chr(c) for c in range(0x21, 0x7F) if chr(c) not in '"<>`{}')
_QUERY_SAFE = "".join(chr(c) for c in range(0x21, 0x7F) if chr(c) not in '"<>')


class _Http1:
    """One kept-alive HTTP/1.1 connection, with the standard library's
    :mod:`http.client`: connected on the first request and again after the
    receiver closed it."""

    def __init__(self, options: WebhookOptions) -> None:
        self._options = options
        parts = urlsplit(options.url)
        self._target = quote(parts.path or "/", safe=_PATH_SAFE)
        if parts.query:
            self._target += "?" + quote(parts.query, safe=_QUERY_SAFE)
        self._headers = _default_headers(options)
        https = parts.scheme.lower() == "https"
        host, port = parts.hostname or "", parts.port or (443 if https else 80)
        self._connection: http.client.HTTPConnection
        if https:
            self._connection = http.client.HTTPSConnection(
                host, port, timeout=options.connect_timeout, context=_tls_context(options)
            )
        else:
            self._connection = http.client.HTTPConnection(
                host, port, timeout=options.connect_timeout
            )

    def post(self, body: bytes, headers: Mapping[str, str]) -> _Answer:
        connection = self._connection
        if connection.sock is not None and _closed_by_peer(connection.sock):
            connection.close()
        if connection.sock is None:
            try:
                connection.connect()
            except OSError as exc:
                connection.close()
                raise _Unreachable(f"connecting to {connection.host}:{connection.port}") from exc
            # Narrowed to None above, connect() set it.
            cast(socket.socket, connection.sock).settimeout(self._options.publish_timeout)
        try:
            connection.request("POST", self._target, body, {**self._headers, **headers})
            response = connection.getresponse()
            content = response.read()
        except BaseException:
            connection.close()
            raise
        try:
            text = content.decode(response.headers.get_content_charset() or "utf-8", "replace")
        except LookupError:  # a charset Python does not know
            text = content.decode("utf-8", "replace")
        return _Answer(response.status, response.reason, response.getheader("retry-after"), text)

    def close(self) -> None:
        self._connection.close()

    def abort(self) -> None:
        sock = self._connection.sock
        if sock is not None:
            sock.shutdown(socket.SHUT_RDWR)  # wakes a publish waiting for the answer


def _default_headers(options: WebhookOptions) -> dict[str, str]:
    """The user's headers, with ``User-Agent: dask-eventbus/<version>`` unless
    they set one (in any case)."""
    headers = dict(options.headers)
    if not any(name.lower() == "user-agent" for name in headers):
        headers["User-Agent"] = f"dask-eventbus/{__version__}"
    return headers


def _closed_by_peer(sock: Any) -> bool:
    """Whether a kept-alive connection, idle between requests, was closed by
    the receiver (it is readable: at its end, or with an unasked answer)."""
    readable, _, _ = select.select([sock], [], [], 0)
    return bool(readable)


def _tls_context(options: WebhookOptions) -> ssl.SSLContext:
    """The TLS block's context or, without one, httpx's default: the CAs of
    ``SSL_CERT_FILE`` or ``SSL_CERT_DIR``, else certifi's."""
    if options.tls is not None:
        return options.tls.context()
    if os.environ.get("SSL_CERT_FILE"):
        return ssl.create_default_context(cafile=os.environ["SSL_CERT_FILE"])
    if os.environ.get("SSL_CERT_DIR"):
        return ssl.create_default_context(capath=os.environ["SSL_CERT_DIR"])
    try:
        import certifi
    except ImportError:
        return ssl.create_default_context()
    return ssl.create_default_context(cafile=certifi.where())


def _proxy_in_environment() -> bool:
    """Whether the environment names a proxy (which httpx then honours, with
    ``no_proxy``)."""
    return any(value for name, value in os.environ.items() if name.lower() in PROXY_VARIABLES)


class _Httpx:
    """One kept-alive connection with httpx: HTTP/2 when asked, and through a
    proxy the environment names."""

    def __init__(self, options: WebhookOptions, tls_possible: bool) -> None:
        import httpx

        verify: Any = True
        if options.tls is not None:
            verify = options.tls.context()
        elif not tls_possible:
            # Nothing to verify, and loading the certificate store took 20 ms
            # of every open, which a scheduler's close waits for.
            verify = False
        self._url = options.url
        self._client = httpx.Client(
            headers=_default_headers(options),
            timeout=httpx.Timeout(options.publish_timeout, connect=options.connect_timeout),
            verify=verify,
            http2=options.http2,
            follow_redirects=False,
            limits=httpx.Limits(max_connections=1, max_keepalive_connections=1),
        )

    def post(self, body: bytes, headers: Mapping[str, str]) -> _Answer:
        response = self._client.post(self._url, content=body, headers=headers)
        try:
            text = response.text
        except Exception:
            text = ""
        return _Answer(
            response.status_code, response.reason_phrase, response.headers.get("retry-after"), text
        )

    def close(self) -> None:
        self._client.close()

    abort = close


def _httpx_problem(exc: BaseException, detail: str) -> Problem | None:
    import httpx

    from .diagnosis import Problem

    if isinstance(exc, httpx.TimeoutException):
        return Problem("timeout", detail)
    if isinstance(exc, httpx.ConnectError):
        return Problem("connect", detail)
    if isinstance(exc, httpx.TransportError):
        return Problem("lost", detail)
    return None


def _one_line(text: str) -> str:
    """The first part of a receiver's answer, on one line."""
    text = " ".join(text.split())
    return text[:ANSWER_CHARS] + ("..." if len(text) > ANSWER_CHARS else "")
