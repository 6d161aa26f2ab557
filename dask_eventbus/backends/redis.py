"""``redis``: one Redis Streams entry per event.

Each batch is one pipeline (no MULTI/EXEC) of ``XADD`` commands, trimmed
approximately with ``MAXLEN ~``; :meth:`RedisBackend.publish` returns once
Redis has answered every ``XADD`` with an entry id and raises otherwise.
An entry holds the event type, subject, id and sequence number as fields of
their own, so ``redis-cli XRANGE`` is readable, beside the untouched
CloudEvent JSON in the field ``event``.

The publisher speaks the Redis protocol itself, on a connection of its own
(:class:`_Connection`): imported, redis-py would take most of a publisher
process's start (150 ms of CPU and more: its package loads its asyncio client
too, and OpenTelemetry's SDK where that is installed), while publishing needs
a socket, a few commands and the ``XADD`` commands the binding packs. What
goes wrong still raises redis-py's exceptions, made by redis-py, which is
imported then. A url with redis-py's query parameters (other than ``db``),
and the deprecated ``ssl-*`` options, publish through redis-py.

Consumers read with redis-py (:mod:`.redis_reader`): ``XREAD`` (from now,
from the beginning or after a given entry id) or, given ``group=``,
``XREADGROUP`` in a consumer group that is created if missing and
acknowledges each event after it was yielded.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import socket
from collections.abc import Sequence
from typing import IO, TYPE_CHECKING, Annotated, Any, Literal, NamedTuple, NoReturn
from urllib.parse import parse_qs, unquote, urlsplit

import msgspec

from ..bindings.redis import xadd_commands
from ..config import PositiveDuration, redact_url
from .contract import Backend, Message, NetworkOptions, SubscribeOptions, url_scheme
from .tls import TLSOptions, deprecated

if TYPE_CHECKING:
    import redis

    from .diagnosis import Problem
    from .subscription import Subscription

logger = logging.getLogger("distributed.eventbus")

SCHEMES = ("redis", "rediss", "unix")


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
            target = _Target.of(self.url)
            if target.query:  # redis-py's parameters: redis-py reads them
                from redis.connection import parse_url

                parse_url(self.url)
        except ValueError as exc:
            raise ValueError(f"url is not a valid Redis URL: {redact_url(str(exc))}") from None
        if self.password is not None and target.password is not None:
            raise ValueError("give the password either in url or as password, not both")
        if self.username is not None and target.username is not None:
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
        self._sender: _Connection | _ThroughRedisPy | None = None
        self._target = target = _Target.of(self.options.url)
        self._where = f"unix:{target.path}" if target.path is not None else target.address
        self._user = self.options.username or target.username or "default"
        self._has_password = bool(self.options.password or target.password)
        self._own_connection = target.query <= {"db"} and not any(
            getattr(self.options, name) is not None for name in _DEPRECATED_TLS
        )

    # ------------------------------------------------------------ producer

    def client(
        self, *, read_timeout: float | None = None, role: str = "", retries: int = 0
    ) -> redis.Redis:
        """A new redis-py client configured from the options.

        Timeouts bound every call. redis-py retries a command that failed
        with a connection error ``retries`` times at once, and never one that
        timed out: the caller's own retry and backoff apply after that.
        """
        import redis
        from redis.backoff import NoBackoff
        from redis.exceptions import ConnectionError as RedisConnectionError
        from redis.retry import Retry

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
        if self._own_connection:
            sender: _Connection | _ThroughRedisPy = _Connection(
                self.options, self._target, self._where
            )
        else:
            sender = _ThroughRedisPy(self.client())
        try:
            sender.open()
        except BaseException:
            sender.close()
            raise
        self._sender = sender

    def publish(self, messages: Sequence[Message]) -> None:
        sender = self._sender
        if sender is None:
            raise RuntimeError("redis backend is not open")
        if not messages:
            return
        payload = xadd_commands(messages, self.options.stream, self.options.maxlen)
        try:
            errors = sender.send(payload, len(messages))
        except Exception as exc:
            from redis.exceptions import AuthenticationError, AuthorizationError, BusyLoadingError
            from redis.exceptions import ConnectionError as RedisConnectionError

            if not isinstance(exc, RedisConnectionError) or isinstance(
                exc, (AuthenticationError, AuthorizationError, BusyLoadingError)
            ):
                raise
            # Most likely Redis closed the connection since the last batch
            # (a restart, CLIENT KILL, an idle timeout): once more at once on
            # a new connection, before the pipeline's backoff. XADDs Redis
            # applied before the connection broke are repeated: duplicates,
            # never losses.
            errors = sender.send(payload, len(messages))
        if errors:
            from redis.exceptions import ResponseError

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
        sender, self._sender = self._sender, None
        if sender is not None:
            try:
                sender.close()
            except Exception:
                logger.debug("dask-eventbus: closing the Redis connection failed", exc_info=True)

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
        from .redis_reader import MAX_BLOCK, open_reader

        # A reader retries a broken connection once at once and then keeps
        # trying in fetch(): it follows the stream through outages.
        client = self.client(
            read_timeout=self.options.publish_timeout + MAX_BLOCK, role="-subscriber", retries=1
        )
        return open_reader(self, client, options)

    # ------------------------------------------------------------ for people

    def describe(self) -> str:
        return f"Redis stream {self.options.stream!r} at {redact_url(self.options.url)}"

    def broker(self) -> str:
        return f"Redis at {self._where}"

    def classify(self, exc: BaseException) -> Problem | None:
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

        from .diagnosis import Problem

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


class _Target(NamedTuple):
    """Where and as whom a url says to connect, read as redis-py reads it."""

    host: str
    port: int
    path: str | None
    """The socket's, for a ``unix://`` url."""
    db: int
    username: str | None
    password: str | None
    query: frozenset[str]
    """The names of the url's query parameters."""

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @classmethod
    def of(cls, url: str) -> _Target:
        parts = urlsplit(url)
        query = {name: values[0] for name, values in parse_qs(parts.query).items()}
        try:
            db = int(query.get("db", 0))
        except ValueError:
            raise ValueError("Invalid value for 'db' in connection URL.") from None
        unix = parts.scheme == "unix"
        if parts.path and "db" not in query and not unix:
            with contextlib.suppress(ValueError):
                db = int(unquote(parts.path).replace("/", ""))
        return cls(
            unquote(parts.hostname or "") or "localhost",
            6379 if parts.port is None else parts.port,
            unquote(parts.path) if unix else None,
            db,
            unquote(parts.username) if parts.username else query.get("username"),
            unquote(parts.password) if parts.password else query.get("password"),
            frozenset(query),
        )


def _command(*args: str) -> bytes:
    """One command in the Redis protocol."""
    encoded = [arg.encode() for arg in args]
    return b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in encoded)


def _failure(exc: OSError, doing: str) -> Exception:
    """redis-py's exception for ``exc``, met while ``doing``."""
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError

    if isinstance(exc, TimeoutError):
        return RedisTimeoutError(f"Timeout {doing}")
    return RedisConnectionError(f"Error {doing}: {exc}")


class _Connection:
    """The publisher's connection to Redis: RESP2 over a socket of its own.

    Connects and authenticates as redis-py does with the same options (AUTH,
    CLIENT SETNAME, SELECT; here in one round trip, with a PING), and
    connects again when a send finds it closed.
    """

    def __init__(self, options: RedisOptions, target: _Target, where: str) -> None:
        self._options, self._target, self._where = options, target, where
        self._socket: socket.socket | None = None
        self._replies: IO[bytes] | None = None

    def open(self) -> None:
        options, target = self._options, self._target
        try:
            sock = self._connect()
        except OSError as exc:
            raise _failure(exc, f"connecting to {self._where}") from exc
        sock.settimeout(options.publish_timeout)
        self._socket, self._replies = sock, sock.makefile("rb")
        hello = []
        password = options.password or target.password
        if password is not None:
            username = options.username or target.username
            hello.append(_command("AUTH", *([username] if username else []), password))
        if options.client_name:
            hello.append(_command("CLIENT", "SETNAME", options.client_name))
        if target.db:
            hello.append(_command("SELECT", str(target.db)))
        hello.append(_command("PING"))
        errors = self._exchange(b"".join(hello), len(hello))
        if errors:
            self.close()
            raise errors[0]

    def _connect(self) -> socket.socket:
        options, target = self._options, self._target
        if target.path is not None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.settimeout(options.connect_timeout)
                sock.connect(target.path)
            except BaseException:
                sock.close()
                raise
            return sock
        sock = socket.create_connection((target.host, target.port), options.connect_timeout)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            # Notices a peer that vanished without closing (a host gone) while
            # the connection sits idle between batches.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            if options.url.lower().startswith("rediss://"):
                context = (options.tls or TLSOptions()).context()
                sock = context.wrap_socket(sock, server_hostname=target.host)
        except BaseException:
            sock.close()
            raise
        return sock

    def send(self, payload: bytes, count: int) -> list[Exception]:
        """Write ``count`` packed commands and read every reply (connecting
        first if need be); the error replies."""
        if self._socket is None:
            self.open()
        return self._exchange(payload, count)

    def _exchange(self, payload: bytes, count: int) -> list[Exception]:
        assert self._socket is not None
        try:
            self._socket.sendall(payload)
            replies = [self._reply() for _ in range(count)]
        except OSError as exc:
            self.close()
            raise _failure(exc, f"talking to {self._where}") from exc
        except BaseException:
            self.close()
            raise
        return [reply for reply in replies if isinstance(reply, Exception)]

    def _reply(self) -> Any:
        assert self._replies is not None
        line = self._replies.readline()
        if not line.endswith(b"\r\n"):
            return self._closed()
        kind, rest = line[:1], line[1:-2]
        if kind == b"-":
            # redis-py reads the error, to raise the exception redis-py would.
            from redis._parsers import BaseParser

            return BaseParser.parse_error(rest.decode("utf-8", "replace"))
        if kind in (b"+", b":"):
            return rest
        if kind == b"$":
            size = int(rest)
            if size < 0:
                return None
            data = self._replies.read(size + 2)
            if len(data) < size + 2:
                return self._closed()
            return data[:-2]
        if kind == b"*":
            size = int(rest)
            return None if size < 0 else [self._reply() for _ in range(size)]
        from redis.exceptions import InvalidResponse

        raise InvalidResponse(f"Protocol error, got {line[:40]!r} from {self._where}")

    def _closed(self) -> NoReturn:
        from redis.exceptions import ConnectionError as RedisConnectionError

        raise RedisConnectionError(f"Connection closed by server ({self._where}).")

    def close(self) -> None:
        sock, replies, self._socket, self._replies = self._socket, self._replies, None, None
        if replies is not None:
            replies.close()
        if sock is not None:
            sock.close()


class _ThroughRedisPy:
    """Publishing with redis-py's client: for what :class:`_Connection` does
    not read (redis-py's query parameters, its ssl-* arguments)."""

    def __init__(self, client: redis.Redis) -> None:
        import redis

        self._client = client
        # redis-py before 5.3 requires a command name here; later releases warn when given one.
        get_connection = inspect.signature(redis.ConnectionPool.get_connection)
        required = get_connection.parameters["command_name"].default is inspect.Parameter.empty
        self._command_name = ("XADD",) if required else ()

    def open(self) -> None:
        self._client.ping()

    def send(self, payload: bytes, count: int) -> list[Exception]:
        """Write ``count`` packed commands on one pooled connection; read every reply.

        Returns the error replies. Connection trouble raises; the connection is
        then dropped rather than returned to the pool half read.
        """
        from redis.exceptions import ResponseError

        pool = self._client.connection_pool
        connection = pool.get_connection(*self._command_name)
        try:
            connection.send_packed_command([payload])
            errors: list[Exception] = []
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

    def close(self) -> None:
        self._client.close()
