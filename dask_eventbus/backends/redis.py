"""``redis``: one Redis Streams entry per event, with redis-py.

Each batch is one pipeline (no MULTI/EXEC) of ``XADD`` commands, trimmed
approximately with ``MAXLEN ~``; :meth:`RedisBackend.publish` returns once
Redis has answered every ``XADD`` with an entry id and raises otherwise.
An entry holds the event type, subject, id and sequence number as fields of
their own, so ``redis-cli XRANGE`` is readable, beside the untouched
CloudEvent JSON in the field ``event``.

Consumers read with ``XREAD`` (from now, from the beginning or after a given
entry id) or, given ``group=``, with ``XREADGROUP`` in a consumer group that
is created if missing and acknowledges each event after it was yielded.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Sequence
from typing import Annotated, Any, Literal

import msgspec
import redis
from redis.backoff import NoBackoff
from redis.connection import parse_url
from redis.exceptions import (
    AuthenticationError,
    AuthorizationError,
    BusyLoadingError,
    NoPermissionError,
    OutOfMemoryError,
    ReadOnlyError,
    ResponseError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

from ..bindings.redis import xadd_commands
from ..config import PositiveDuration, redact_url
from .contract import Backend, BackendOptions, Message, url_scheme
from .diagnosis import Problem
from .subscription import Subscription
from .tls import TLSOptions, deprecated

logger = logging.getLogger("distributed.eventbus")

SCHEMES = ("redis", "rediss", "unix")


class RedisOptions(BackendOptions):
    """Options of the ``redis`` backend (``eventbus.backends.redis``)."""

    url: str = "redis://localhost:6379/0"
    username: str | None = None
    password: str | None = None
    stream: Annotated[str, msgspec.Meta(min_length=1)] = "dask-events"
    maxlen: Annotated[int, msgspec.Meta(ge=0)] = 1_000_000
    connect_timeout: PositiveDuration = PositiveDuration(5.0)
    socket_timeout: PositiveDuration = PositiveDuration(5.0)
    client_name: str | None = "dask-eventbus"
    tls: TLSOptions | None = None
    # Deprecated: the tls block replaces these.
    ssl_ca_certs: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    ssl_cert_reqs: Literal["required", "optional", "none"] | None = None
    ssl_check_hostname: bool | None = None

    def __post_init__(self) -> None:
        scheme = url_scheme(self.url, SCHEMES, tls=("rediss",))
        try:
            parsed = parse_url(self.url)
        except ValueError as exc:
            raise ValueError(f"url is not a valid Redis URL: {redact_url(str(exc))}") from None
        if self.password is not None and parsed.get("password") is not None:
            raise ValueError("give the password either in url or as password, not both")
        if self.username is not None and parsed.get("username") is not None:
            raise ValueError("give the username either in url or as username, not both")
        if self.client_name is not None and (
            not self.client_name or any(c.isspace() for c in self.client_name)
        ):
            raise ValueError(
                f"client-name must be non-empty without spaces, got {self.client_name!r}"
            )
        old_tls = [name for name in _DEPRECATED_TLS if getattr(self, name) is not None]
        for name in old_tls:
            deprecated(name.replace("_", "-"), "redis")
        if old_tls and self.tls is not None:
            raise ValueError("give the tls block or the deprecated ssl-* options, not both")
        if self.tls is not None:
            self.tls.refuse("redis-py", "server-hostname")
        tls_given = [name.replace("_", "-") for name in old_tls if name != "ssl_check_hostname"]
        if self.tls is not None:
            tls_given.insert(0, "tls")
        if tls_given and scheme != "rediss":
            raise ValueError(f"{', '.join(tls_given)} need a rediss:// url (TLS)")


class RedisBackend(Backend):
    """Appends events to a Redis stream, one entry per event."""

    name = "redis"
    Options = RedisOptions
    options: RedisOptions
    timeout_options = ("connect-timeout", "socket-timeout")

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self._client: redis.Redis | None = None
        parsed = parse_url(self.options.url)
        if "path" in parsed:
            self._where = f"unix:{parsed['path']}"
        else:
            self._where = f"{parsed.get('host', 'localhost')}:{parsed.get('port', 6379)}"
        self._user = self.options.username or parsed.get("username") or "default"
        self._has_password = bool(self.options.password or parsed.get("password"))

    # ------------------------------------------------------------ producer

    def client(
        self, *, read_timeout: float | None = None, role: str = "", retries: int = 0
    ) -> redis.Redis:
        """A new redis-py client configured from the options.

        Timeouts bound every call. redis-py retries a command that failed
        with a connection error ``retries`` times at once, and never one that
        timed out: the caller's own retry and backoff apply after that.
        """
        options = self.options
        kwargs: dict[str, Any] = {
            "socket_connect_timeout": options.connect_timeout,
            "socket_timeout": read_timeout or options.socket_timeout,
            "retry": Retry(NoBackoff(), retries, supported_errors=(RedisConnectionError,)),
        }
        if not options.url.lower().startswith("unix://"):
            # Notices a peer that vanished without closing (a host gone)
            # while the connection sits idle between batches.
            kwargs["socket_keepalive"] = True
        if options.client_name:
            kwargs["client_name"] = options.client_name + role
        if options.username is not None:
            kwargs["username"] = options.username
        if options.password is not None:
            kwargs["password"] = options.password
        if options.url.lower().startswith("rediss://"):
            kwargs.update(_tls_arguments(options))
        return redis.Redis.from_url(options.url, **kwargs)

    def open(self) -> None:
        self.close()
        client = self.client()
        try:
            client.ping()
        except BaseException:
            client.close()
            raise
        self._client = client

    def publish(self, messages: Sequence[Message]) -> None:
        client = self._client
        if client is None:
            raise RuntimeError("redis backend is not open")
        if not messages:
            return
        payload = xadd_commands(messages, self.options.stream, self.options.maxlen)
        try:
            errors = _send(client, payload, len(messages))
        except RedisConnectionError as exc:
            if isinstance(exc, (AuthenticationError, AuthorizationError, BusyLoadingError)):
                raise
            # Most likely Redis closed the connection since the last batch
            # (a restart, CLIENT KILL, an idle timeout): once more at once on
            # a new connection, before the pipeline's backoff. XADDs Redis
            # applied before the connection broke are repeated: duplicates,
            # never losses.
            errors = _send(client, payload, len(messages))
        if errors:
            first = errors[0]
            message = (
                f"{len(errors)} of {len(messages)} XADD commands to stream "
                f"{self.options.stream!r} failed; the first: {first}"
            )
            try:
                failure = type(first)(message)
            except Exception:
                failure = ResponseError(message)
            raise failure from first

    def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            try:
                client.close()
            except Exception:
                logger.debug("dask-eventbus: closing the Redis client failed", exc_info=True)

    # ------------------------------------------------------------ consumer

    def subscribe(
        self,
        *,
        from_beginning: bool = False,
        group: str | None = None,
        consumer: str | None = None,
        after_id: str | None = None,
        count: int = 500,
        **params: Any,
    ) -> Subscription:
        """Read the stream back.

        Without ``group``: ``XREAD`` of entries added after this call (the
        stream's last entry id is taken now), of every entry still held
        (``from_beginning``), or of the entries after ``after_id``.

        With ``group``: ``XREADGROUP`` as ``consumer`` (default: the host
        name) in that consumer group, created if missing at the stream's end,
        its start (``from_beginning``) or ``after_id``. The consumer first
        gets the entries it was given earlier but never acknowledged, then
        new ones. Each event is acknowledged (``XACK``) once the next one is
        asked for or the subscription is closed.
        """
        if params:
            raise TypeError(f"unknown redis subscribe options: {', '.join(params)}")
        if from_beginning and after_id is not None:
            raise TypeError("give either from_beginning or after_id, not both")
        if consumer is not None and group is None:
            raise TypeError("consumer= needs group=")
        if count < 1:
            raise ValueError(f"count must be at least 1, got {count}")
        from .redis_reader import MAX_BLOCK, open_reader

        # A reader retries a broken connection once at once and then keeps
        # trying in fetch(): it follows the stream through outages.
        client = self.client(
            read_timeout=self.options.socket_timeout + MAX_BLOCK, role="-subscriber", retries=1
        )
        return open_reader(
            self,
            client,
            from_beginning=from_beginning,
            group=group,
            consumer=consumer,
            after_id=after_id,
            count=count,
        )

    # ------------------------------------------------------------ for people

    def describe(self) -> str:
        return f"Redis stream {self.options.stream!r} at {redact_url(self.options.url)}"

    def broker(self) -> str:
        return f"Redis at {self._where}"

    def classify(self, exc: BaseException) -> Problem | None:
        user, stream = f"user {self._user!r}", self.options.stream
        detail = str(exc)
        if isinstance(exc, (AuthenticationError, AuthorizationError)) or _starts(
            exc, "WRONGPASS", "NOAUTH", "AUTH"
        ):
            if not self._has_password or _starts(exc, "NOAUTH"):
                fix = (
                    "it requires authentication: give a password in the url or as "
                    "eventbus.backends.redis.password"
                )
                return Problem("authentication", detail, fix=fix)
            return Problem("authentication", detail, user, "check the username and password")
        if isinstance(exc, NoPermissionError) or _starts(exc, "NOPERM"):
            if "client|setname" in detail.lower():
                fix = "grant it +client|setname or set eventbus.backends.redis.client-name to null"
                return Problem("permission", detail, user, fix)
            return Problem("permission", detail, user, f"publishing needs +xadd +ping on ~{stream}")
        if isinstance(exc, OutOfMemoryError) or _starts(exc, "OOM"):
            fix = (
                "it is out of memory (maxmemory): lower eventbus.backends.redis.maxlen, trim "
                "or delete streams, or raise maxmemory"
            )
            return Problem("refused", detail, "new entries", fix)
        if isinstance(exc, ReadOnlyError) or _starts(exc, "READONLY"):
            return Problem(
                "refused",
                detail,
                "writes",
                "it is a read-only replica: point the url at the primary",
            )
        if _starts(exc, "WRONGTYPE") or "WRONGTYPE" in detail:
            fix = (
                f"the key {stream!r} exists and is not a stream: choose another "
                "eventbus.backends.redis.stream or delete that key"
            )
            return Problem("refused", detail, f"stream {stream!r}", fix)
        if isinstance(exc, BusyLoadingError):
            return Problem("refused", detail, fix="it is still loading its data after a restart")
        if isinstance(exc, RedisTimeoutError):
            return Problem("timeout", detail)
        if isinstance(exc, RedisConnectionError):
            return Problem("connect", detail)
        if isinstance(exc, ResponseError):
            return Problem("refused", detail, f"a command on stream {stream!r}")
        return None


_DEPRECATED_TLS = (
    "ssl_ca_certs",
    "ssl_certfile",
    "ssl_keyfile",
    "ssl_cert_reqs",
    "ssl_check_hostname",
)


def _tls_arguments(options: RedisOptions) -> dict[str, Any]:
    """redis-py's ``ssl_*`` arguments: from the tls block, or the deprecated options."""
    arguments = (options.tls or TLSOptions()).redis_py()
    for name in _DEPRECATED_TLS:
        if getattr(options, name) is not None:
            arguments[name] = getattr(options, name)
    return arguments


def _starts(exc: BaseException, *prefixes: str) -> bool:
    text = str(exc)
    return any(text.startswith(p) for p in prefixes)


_COMMAND_NAME = (
    ("XADD",)
    if inspect.signature(redis.ConnectionPool.get_connection).parameters["command_name"].default
    is inspect.Parameter.empty
    else ()
)


def _send(client: redis.Redis, payload: bytes, count: int) -> list[ResponseError]:
    """Write ``count`` packed commands on one pooled connection; read every reply.

    Returns the error replies. Connection trouble raises; the connection is
    then dropped rather than returned to the pool half read.
    """
    pool = client.connection_pool
    connection = pool.get_connection(*_COMMAND_NAME)
    try:
        connection.send_packed_command([payload])
        errors = []
        for _ in range(count):
            try:
                connection.read_response()
            except ResponseError as exc:
                errors.append(exc)
        return errors
    except BaseException:
        connection.disconnect()
        raise
    finally:
        pool.release(connection)
