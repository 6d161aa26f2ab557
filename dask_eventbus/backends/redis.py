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
import socket
import time
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

from ..bindings.redis import body_of, xadd_commands
from ..config import PositiveDuration, redact_url
from .contract import Backend, Message, NetworkOptions, SubscribeOptions, url_scheme
from .diagnosis import Problem
from .subscription import Delivery, ReconnectingSubscription, Subscription
from .tls import TLSOptions, deprecated

logger = logging.getLogger("distributed.eventbus")

SCHEMES = ("redis", "rediss", "unix")
# Longest single XREAD BLOCK; longer waits are several reads, so the read
# timeout of the subscriber's connection stays bounded.
MAX_BLOCK = 5.0
# Acknowledgements wait at most this long (or for the next read, or for
# ``count`` of them) to go out together in one XACK.
ACK_INTERVAL = 1.0


class RedisOptions(NetworkOptions):
    """Options of the ``redis`` backend (``eventbus.backends.redis``)."""

    aliases = {"socket-timeout": ("publish-timeout",)}

    url: str = "redis://localhost:6379/0"
    username: str | None = None
    password: str | None = None
    stream: Annotated[str, msgspec.Meta(min_length=1)] = "dask-events"
    maxlen: Annotated[int, msgspec.Meta(ge=0)] = 1_000_000
    connect_timeout: PositiveDuration = PositiveDuration(5.0)
    publish_timeout: PositiveDuration = PositiveDuration(5.0)
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


class RedisSubscribeOptions(SubscribeOptions):
    group: str | None = None
    """A consumer group to read in (``XREADGROUP``); None: plain ``XREAD``."""
    consumer: str | None = None
    """The consumer's name in ``group``; None: the host name."""
    after_id: str | None = None
    """Read the entries after this stream id."""
    count: Annotated[int, msgspec.Meta(ge=1)] = 500
    """Entries read at once."""

    def __post_init__(self) -> None:
        if self.from_beginning and self.after_id is not None:
            raise ValueError("give either from-beginning or after-id, not both")
        if self.consumer is not None and self.group is None:
            raise ValueError("consumer needs group")


class RedisBackend(Backend):
    """Appends events to a Redis stream, one entry per event."""

    name = "redis"
    Options = RedisOptions
    options: RedisOptions
    SubscribeOptions = RedisSubscribeOptions

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
            "socket_timeout": read_timeout or options.publish_timeout,
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

    def open_subscription(self, options: RedisSubscribeOptions) -> Subscription:
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
        group, after_id, count = options.group, options.after_id, options.count
        # A reader retries a broken connection once at once and then keeps
        # trying in fetch(): it follows the stream through outages.
        client = self.client(
            read_timeout=self.options.publish_timeout + MAX_BLOCK, role="-subscriber", retries=1
        )
        stream = self.options.stream
        try:
            if group is None:
                if options.from_beginning:
                    start = "0-0"
                elif after_id is not None:
                    start = after_id
                else:
                    last: Any = client.xrevrange(stream, "+", "-", count=1)
                    start = _text(last[0][0]) if last else "0-0"
                reader: _RedisSubscription = _StreamReader(self, client, start, count)
            else:
                start = "0" if options.from_beginning else after_id or "$"
                _create_group(client, stream, group, start)
                consumer = options.consumer or socket.gethostname()
                reader = _GroupReader(self, client, group, consumer, count)
            reader.start()
            return reader
        except BaseException:
            client.close()
            raise

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


Entry = tuple[bytes, dict[bytes, bytes] | None]
"""A stream entry as redis-py returns it: id and fields (None when trimmed)."""


def _starts(exc: BaseException, *prefixes: str) -> bool:
    text = str(exc)
    return any(text.startswith(p) for p in prefixes)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


# redis-py before 5.3 requires a command name here; later releases warn when given one.
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


def _create_group(client: redis.Redis, stream: str, group: str, start: str) -> None:
    try:
        client.xgroup_create(stream, group, id=start, mkstream=True)
    except ResponseError as exc:
        if not str(exc).startswith("BUSYGROUP"):
            raise


def _entries(reply: Any) -> list[Entry]:
    """The entries of an XREAD/XREADGROUP reply on one stream (RESP2 or RESP3)."""
    if not reply:
        return []
    if isinstance(reply, dict):
        found: list[Any] = []
        for value in reply.values():
            found.extend(value[0] if value and isinstance(value[0], list) else value)
        return found
    return list(reply[0][1])


class _RedisSubscription(ReconnectingSubscription):
    connection_errors = (RedisConnectionError, RedisTimeoutError)
    acks_outlive_connections = True  # XACK names entries, not deliveries

    def __init__(self, backend: RedisBackend, client: redis.Redis, count: int) -> None:
        super().__init__("Redis", backend.explain, logger)
        self._client = client
        self._stream = backend.options.stream
        self._count = count
        self._last_entry_id: str | None = None

    @property
    def last_entry_id(self) -> str | None:
        """The stream entry id of the event last returned, if any."""
        if self._unacked is not None:
            return _text(self._unacked.token)
        return self._last_entry_id

    def _connect(self) -> None:
        # redis-py reconnects by itself on the next command; a ping tells
        # when Redis is back.
        self._client.ping()

    def _read(self, timeout: float) -> list[Delivery]:
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            deliveries = self._deliveries(self._read_entries(min(max(remaining, 0.001), MAX_BLOCK)))
            if deliveries or time.monotonic() >= deadline:
                return deliveries

    def _read_entries(self, block: float) -> list[Entry]:
        raise NotImplementedError

    def _deliveries(self, entries: list[Entry]) -> list[Delivery]:
        deliveries = []
        for entry_id, fields in entries:
            body = body_of(fields)
            if body is None:
                # Trimmed away while pending in a group: nothing to deliver.
                self._acknowledge(entry_id)
                continue
            deliveries.append(Delivery(body, entry_id))
        return deliveries

    def _disconnect(self) -> None:
        self._client.connection_pool.disconnect()

    def _close(self) -> None:
        try:
            self._client.close()
        except Exception:
            logger.debug("dask-eventbus: closing the Redis subscriber failed", exc_info=True)


class _StreamReader(_RedisSubscription):
    """XREAD after a last-seen entry id."""

    def __init__(self, backend: RedisBackend, client: redis.Redis, start: str, count: int) -> None:
        super().__init__(backend, client, count)
        self._after = start

    def _read_entries(self, block: float) -> list[Entry]:
        reply = self._client.xread(
            {self._stream: self._after}, count=self._count, block=max(1, int(block * 1000))
        )
        entries = _entries(reply)
        if entries:
            self._after = _text(entries[-1][0])
        return entries

    def _acknowledge(self, token: Any) -> None:
        if token is not None:
            self._last_entry_id = _text(token)


class _GroupReader(_RedisSubscription):
    """XREADGROUP: this consumer's unacknowledged entries first, then new ones."""

    def __init__(
        self,
        backend: RedisBackend,
        client: redis.Redis,
        group: str,
        consumer: str,
        count: int,
    ) -> None:
        super().__init__(backend, client, count)
        self.group = group
        self.consumer = consumer
        self._pending_after: str | None = "0"
        self._acks: list[bytes] = []
        self._acks_since = 0.0

    def _read_entries(self, block: float) -> list[Entry]:
        self._flush_acks()
        try:
            if self._pending_after is not None:
                entries = _entries(
                    self._client.xreadgroup(
                        self.group,
                        self.consumer,
                        {self._stream: self._pending_after},
                        count=self._count,
                    )
                )
                if entries:
                    self._pending_after = _text(entries[-1][0])
                    return entries
                self._pending_after = None
            return _entries(
                self._client.xreadgroup(
                    self.group,
                    self.consumer,
                    {self._stream: ">"},
                    count=self._count,
                    block=max(1, int(block * 1000)),
                )
            )
        except ResponseError as exc:
            if not str(exc).startswith("NOGROUP"):
                raise
            # The stream or the group went away (deleted, or a Redis restart
            # without persistence): whatever the stream holds now is new.
            logger.warning(
                "dask-eventbus: consumer group %r on %s is gone; creating it again",
                self.group,
                self._stream,
            )
            _create_group(self._client, self._stream, self.group, "0")
            self._pending_after = None
            self._acks.clear()
            return []

    def _acknowledge(self, token: Any) -> None:
        self._last_entry_id = _text(token)
        if not self._acks:
            self._acks_since = time.monotonic()
        self._acks.append(token)
        if len(self._acks) >= self._count or time.monotonic() - self._acks_since >= ACK_INTERVAL:
            self._flush_acks()

    def _flush_acks(self) -> None:
        if not self._acks:
            return
        acks, self._acks = self._acks, []
        try:
            self._client.xack(self._stream, self.group, *acks)
        except (RedisConnectionError, RedisTimeoutError, ResponseError):
            # Unacknowledged entries are delivered again: at least once.
            logger.warning(
                "dask-eventbus: could not acknowledge %d entries on %s; they will be "
                "delivered again",
                len(acks),
                self._stream,
            )

    def _close(self) -> None:
        try:
            self._flush_acks()
        except Exception:
            logger.debug("dask-eventbus: final XACK failed", exc_info=True)
        super()._close()
