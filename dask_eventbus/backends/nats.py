"""``nats``: NATS JetStream.

Each event is a NATS message on ``<subject-prefix>.<routing key>`` (see
:mod:`dask_eventbus.bindings.nats`) with a ``Nats-Msg-Id`` header, so the
stream drops the copies that a retried publish sends within its duplicate
window. A batch is published as a whole (pipelined), and
:meth:`NatsBackend.publish` returns once JetStream acknowledged every
message, within ``publish-timeout``; it raises otherwise.

The publisher speaks the NATS client protocol itself, on a socket of its own
(:class:`_Connection`): imported, nats-py would take much of a publisher
process's start (asyncio, its JetStream API's dataclasses,
importlib.metadata), while publishing needs a socket, ``CONNECT``, one
subscription for the acknowledgements, the stream check and ``HPUB``. What
goes wrong still raises nats-py's exceptions, made by nats-py, which is
imported then. TLS (a ``tls://`` url or the tls block), a creds-file and an
nkey-seed-file publish through nats-py (:mod:`.nats_client`), on an event
loop in a thread of its own. Neither connection reconnects in the middle of
a batch: a broken one fails the publish, and the pipeline reopens.

Consumers read with nats-py (:mod:`.nats_reader`), with a JetStream pull
consumer: an ephemeral one that starts after the stream's last message (or
at its first, ``from_beginning``), or a durable one shared by every
subscriber giving its name, which remembers what was acknowledged.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Annotated, Any, NoReturn
from urllib.parse import urlsplit

import msgspec

from .._version import __version__
from ..bindings.nats import check_subject_prefix, to_record
from ..config import PositiveDuration, redact_url
from .contract import Backend, Message, NetworkOptions, SubscribeOptions, url_scheme
from .tls import TLSOptions

if TYPE_CHECKING:
    from .diagnosis import Problem
    from .nats_client import ThroughNatsPy
    from .subscription import Subscription

logger = logging.getLogger("distributed.eventbus")

SCHEMES = ("nats", "tls")
# JetStream API error codes the diagnosis names.
STREAM_NAME_IN_USE = 10058
_SUBJECTS_OVERLAP = 10065
_JETSTREAM_NOT_ENABLED = (10039, 10076)


class NatsOptions(NetworkOptions):
    """Options of the ``nats`` backend (``eventbus.backends.nats``)."""

    aliases = {"create-stream": ("create-missing",)}

    url: str | list[str] = "nats://localhost:4222"
    user: str | None = None
    password: str | None = None
    token: str | None = None
    creds_file: str | None = None
    nkey_seed_file: str | None = None
    stream: str = "dask-events"
    subject_prefix: str = "dask-events"
    create_missing: bool = True
    max_age: PositiveDuration | None = None
    max_bytes: Annotated[int, msgspec.Meta(ge=1)] | None = None
    max_msgs: Annotated[int, msgspec.Meta(ge=1)] | None = 1_000_000
    duplicate_window: PositiveDuration = PositiveDuration(120.0)
    deduplicate: bool = True
    connect_timeout: PositiveDuration = PositiveDuration(5.0)
    publish_timeout: PositiveDuration = PositiveDuration(10.0)
    connection_name: str | None = "dask-eventbus"
    tls: TLSOptions | None = None

    def servers(self) -> list[str]:
        """The server URLs: the list, or the comma-separated string, of ``url``."""
        given = self.url if isinstance(self.url, list) else self.url.split(",")
        return [server.strip() for server in given if server.strip()]

    def wants_tls(self) -> bool:
        return self.tls is not None or any(s.lower().startswith("tls://") for s in self.servers())

    def __post_init__(self) -> None:
        servers = self.servers()
        if not servers:
            raise ValueError("url must name at least one server, e.g. nats://localhost:4222")
        in_url_user = False
        for server in servers:
            url_scheme(server, SCHEMES, tls=("tls",))
            try:
                parsed = urlsplit(server)
                parsed.port  # noqa: B018 - raises for a port that is no number
            except ValueError:
                raise ValueError(f"url {redact_url(server)!r} is not a valid URL") from None
            if parsed.username is not None and parsed.password is None:
                # nats-py would send it as a token: it must be masked like one.
                raise ValueError("give a token as token, not in the url")
            in_url_user = in_url_user or parsed.username is not None
        if in_url_user and (self.user is not None or self.password is not None):
            raise ValueError("give the user and password either in url or as user/password")
        if (self.user is None) != (self.password is None):
            raise ValueError("user and password go together")
        ways = [
            name
            for name, given in (
                ("user/password", self.user is not None or in_url_user),
                ("token", self.token is not None),
                ("creds-file", self.creds_file is not None),
                ("nkey-seed-file", self.nkey_seed_file is not None),
            )
            if given
        ]
        if len(ways) > 1:
            raise ValueError(f"give one way to authenticate, not {' and '.join(ways)}")
        check_subject_prefix(self.subject_prefix)
        if not self.stream or any(c in self.stream for c in " \t\r\n.*>/\\"):
            raise ValueError(
                f"stream {self.stream!r} must be a non-empty name without spaces, ., *, >, / or \\"
            )
        if self.connection_name is not None and not self.connection_name:
            raise ValueError("connection-name must not be empty (null: none)")


class NatsSubscribeOptions(SubscribeOptions):
    durable: str | None = None
    """The durable consumer to read as (created if missing); None: an ephemeral one."""
    types: list[str] | None = None
    """Glob patterns of event types, made subject filters where they map onto subjects."""
    subjects: list[str] | None = None
    """The consumer's subject filters (NATS wildcards), instead of ``types``."""
    count: Annotated[int, msgspec.Meta(ge=1)] = 256
    """Messages fetched at once."""

    def __post_init__(self) -> None:
        durable = self.durable
        if durable is not None and (not durable or any(c in durable for c in " .*>")):
            raise ValueError(f"durable must be a name without spaces, ., * or >, got {durable!r}")


class Aborted(Exception):
    """A publish given up because :meth:`NatsBackend.abort` was called."""


class NatsBackend(Backend):
    """Publishes events to a JetStream stream, one message per event."""

    name = "nats"
    Options = NatsOptions
    options: NatsOptions
    SubscribeOptions = NatsSubscribeOptions

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self._sender: _Connection | ThroughNatsPy | None = None
        self._where = ", ".join(redact_url(s) for s in self.options.servers())
        # What the own connection does not speak goes through nats-py.
        self._own_connection = not (
            self.options.wants_tls()
            or self.options.creds_file is not None
            or self.options.nkey_seed_file is not None
        )

    # ------------------------------------------------------------ producer

    def open(self) -> None:
        self.close()
        if self._own_connection:
            sender: _Connection | ThroughNatsPy = _Connection(self.options, self._where)
        else:
            from .nats_client import ThroughNatsPy

            sender = ThroughNatsPy(self)
        try:
            sender.open()
        except BaseException:
            sender.close()
            raise
        self._sender = sender

    def publish(self, messages: Sequence[Message]) -> None:
        sender = self._sender
        if sender is None:
            raise RuntimeError("nats backend is not open")
        if not messages:
            return
        sender.publish(messages)

    def abort(self) -> None:
        sender = self._sender
        if sender is not None:
            sender.abort()

    def close(self) -> None:
        sender, self._sender = self._sender, None
        if sender is not None:
            try:
                sender.close()
            except Exception:
                logger.debug("dask-eventbus: closing the NATS connection failed", exc_info=True)

    # ------------------------------------------------------------ consumer

    def open_subscription(self, options: NatsSubscribeOptions) -> Subscription:
        """Read the stream back with a JetStream pull consumer.

        Without ``durable``: an ephemeral consumer of the messages stored
        after this call (or of every message still held, ``from_beginning``);
        it follows the stream through reconnections from the last message it
        received. With ``durable``: the durable consumer of that name,
        created if missing (starting with new messages, or the first one
        held, ``from_beginning``) and shared by every subscriber naming it;
        each event is acknowledged once the next one is asked for, and
        messages left unacknowledged are delivered again.

        ``subjects`` are the consumer's subject filters (NATS wildcards, e.g.
        ``dask-events.dask.task.transition.*.erred``; several need NATS 2.10
        or later). Without them, ``types`` (glob patterns of event types)
        become subject filters where they map onto subjects and the server
        takes several (NATS 2.10 and later); the subscription filters by type
        anyway.
        """
        from .nats_reader import open_reader

        return open_reader(self, options)

    # ------------------------------------------------------------ for people

    def describe(self) -> str:
        return (
            f"NATS JetStream stream {self.options.stream!r} (subjects "
            f"{self.options.subject_prefix}.>) at {self._where}"
        )

    def broker(self) -> str:
        return f"NATS at {self._where}"

    def classify(self, exc: BaseException) -> Problem | None:
        import asyncio

        import nats.errors
        from nats.js.errors import APIError, NoStreamResponseError, NotFoundError

        from .diagnosis import Problem

        stream, prefix = self.options.stream, self.options.subject_prefix
        detail = f"{type(exc).__name__}: {exc}"
        if isinstance(exc, nats.errors.NoServersError):
            return Problem("connect", "no server available")
        if isinstance(exc, nats.errors.AuthorizationError) or "authoriz" in detail.lower():
            fix = "check user/password, token, creds-file or nkey-seed-file"
            return Problem("authentication", detail, fix=fix)
        if "permissions violation" in detail.lower():
            fix = (
                f"let the user publish to {prefix}.> and $JS.API.> and subscribe to _INBOX.> "
                "(its permissions in the server's authorization block)"
            )
            return Problem("permission", detail, fix=fix)
        if isinstance(exc, nats.errors.SecureConnWantedError):
            return Problem(
                "tls",
                "the server does not offer TLS, and TLS was asked for (a tls:// url or "
                "the tls block)",
                fix="enable TLS on the server or use nats://",
            )
        if isinstance(exc, nats.errors.SecureConnRequiredError):
            return Problem(
                "tls", "the server requires TLS", fix="use a tls:// url or the tls block"
            )
        if isinstance(exc, NoStreamResponseError):
            fix = (
                f"is JetStream enabled (nats-server -js) and does stream {stream!r} take "
                "these subjects?"
            )
            return Problem("missing", detail, f"a stream for subjects {prefix}.*", fix)
        if isinstance(exc, NotFoundError):
            return Problem("missing", detail, f"stream {stream!r}")
        if isinstance(exc, APIError):
            if exc.err_code == _SUBJECTS_OVERLAP:
                fix = (
                    f"another stream already takes subjects under {prefix}.>; choose another "
                    "subject-prefix, or name that stream as stream"
                )
                return Problem("refused", detail, f"to make stream {stream!r}", fix)
            if exc.err_code in _JETSTREAM_NOT_ENABLED:
                fix = "JetStream is not enabled: start nats-server with -js"
                return Problem("refused", detail, "JetStream requests", fix)
            return Problem("refused", detail, f"a request on stream {stream!r}")
        if isinstance(exc, (Aborted, asyncio.CancelledError)):
            return Problem("said", f"the publish to {self.broker()} was aborted")
        if isinstance(exc, (TimeoutError, asyncio.TimeoutError, nats.errors.TimeoutError)):
            return Problem("timeout", detail)
        if isinstance(exc, (nats.errors.ConnectionClosedError, nats.errors.StaleConnectionError)):
            return Problem("lost", repr(exc.__cause__) if exc.__cause__ is not None else "")
        return None


_CRLF = b"\r\n"
_NO_RESPONDERS = b"503"
# nats-py's default, until the server's INFO says.
_DEFAULT_MAX_PAYLOAD = 1_048_576


class _Server:
    """One server of the url, as nats-py reads it."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url if "://" in url else f"nats://{url}")
        self.host = parts.hostname or "localhost"
        self.port = 4222 if parts.port is None else parts.port
        self.username, self.password = parts.username, parts.password


class _Reply(msgspec.Struct):
    """What JetStream answers a publish or an API request with (what we read of it)."""

    error: dict[str, Any] | None = None


def _nats_error(kind: str, *args: Any) -> Exception:
    """nats-py's exception ``nats.errors.<kind>(*args)``; nats-py is imported now."""
    import nats.errors

    error: Exception = getattr(nats.errors, kind)(*args)
    return error


def _api_error(error: dict[str, Any]) -> Exception:
    """The exception nats-py raises for JetStream's error reply ``error``."""
    from nats.js.errors import APIError

    try:
        APIError.from_error(error)
    except Exception as exc:  # from_error raises what it makes
        return exc
    return APIError(**error)  # pragma: no cover - from_error always raises


def _lost(cause: BaseException | None) -> Exception:
    """nats-py's exception for a connection that closed under a request."""
    failure = _nats_error("ConnectionClosedError")
    failure.__cause__ = cause if cause is not None else _nats_error("UnexpectedEOF")
    return failure


class _Connection:
    """The publisher's connection to NATS: the client protocol over a socket
    of its own. TLS only where a ``nats://`` server requires it, with
    Python's default context as nats-py does; a ``tls://`` url or the tls
    block publish through nats-py (:mod:`.nats_client`).

    Connects to the servers of the url in turn, authenticates as nats-py does
    with the same options (``CONNECT`` with user and password or a token),
    subscribes to one reply subject for every acknowledgement and request,
    and checks the stream (``$JS.API.STREAM.INFO``), creating it if missing
    as nats-py's ``add_stream`` does. Answers the server's ``PING`` while it
    reads; before a batch it reads what came meanwhile, and connects again
    when that shows the server closed the connection (a restart, an idle
    connection found stale).
    """

    def __init__(self, options: NatsOptions, where: str) -> None:
        self._options, self._where = options, where
        self._socket: socket.socket | None = None
        self._buffer = bytearray()
        self._inbox = b""
        self._next = 0
        self._max_payload = _DEFAULT_MAX_PAYLOAD
        self._aborted = False

    # ------------------------------------------------------------ connecting

    def open(self) -> None:
        self._aborted = False
        self._connect()
        self._ensure_stream()

    def _connect(self) -> None:
        options = self._options
        self.close()
        failures: list[OSError] = []
        for url in options.servers():
            server = _Server(url)
            try:
                sock = socket.create_connection((server.host, server.port), options.connect_timeout)
            except OSError as exc:
                failures.append(exc)
                continue
            self._socket, self._buffer = sock, bytearray()
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                # Notices a peer that vanished without closing while the
                # connection sits idle between batches.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
                self._handshake(server, time.monotonic() + options.connect_timeout)
            except BaseException:
                self.close()
                raise
            return
        raise _nats_error("NoServersError") from (failures[-1] if failures else None)

    def _handshake(self, server: _Server, deadline: float) -> None:
        options = self._options
        try:
            line = self._line(deadline)
        except (TimeoutError, Aborted):
            raise
        except Exception as exc:
            line = b""
            closed: BaseException | None = exc
        else:
            closed = None
        if not line.startswith(b"INFO "):
            raise _nats_error(
                "Error", "nats: empty response from server when expecting INFO message"
            ) from closed
        info = msgspec.json.decode(line[5:])
        if info.get("tls_required"):
            self._upgrade(server, deadline)
        if not info.get("headers"):
            raise _nats_error("Error", "nats: the server does not take headers (NATS 2.2+)")
        self._max_payload = int(info.get("max_payload", _DEFAULT_MAX_PAYLOAD))
        connect: dict[str, Any] = {
            "verbose": False,
            "pedantic": False,
            "lang": "python3",
            "version": __version__,
            "protocol": 1,
            "headers": True,
            "no_responders": True,
        }
        if options.connection_name:
            connect["name"] = options.connection_name
        if options.user is not None:
            connect.update(user=options.user, **{"pass": options.password})
        elif options.token is not None:
            connect["auth_token"] = options.token
        elif server.username is not None:
            connect.update(user=server.username, **{"pass": server.password})
        self._inbox = b"_INBOX.%s." % os.urandom(11).hex().encode()
        self._send(
            b"CONNECT %s\r\nSUB %s* 1\r\nPING\r\n" % (msgspec.json.encode(connect), self._inbox)
        )
        while True:
            op = self._line(deadline)
            if op == b"PONG":
                return
            if op.startswith(b"-ERR"):
                # As nats-py raises it: 'Authorization Violation' included.
                raise _nats_error("Error", "nats: " + op[5:].decode("utf-8", "replace"))
            self._message(deadline, op)

    def _upgrade(self, server: _Server, deadline: float) -> None:
        """TLS on a nats:// url to a server that requires it: as nats-py
        does, with Python's default context (the system's CAs)."""
        import ssl

        sock = self._socket
        assert sock is not None
        sock.settimeout(max(deadline - time.monotonic(), 0.001))
        self._socket = ssl.create_default_context().wrap_socket(sock, server_hostname=server.host)

    def _ensure_stream(self) -> None:
        """Make the stream if it is missing, as nats-py's ``add_stream`` does."""
        options = self._options
        deadline = time.monotonic() + options.publish_timeout
        error = self._request(f"$JS.API.STREAM.INFO.{options.stream}", b"", deadline)
        if error is None:
            return
        if error.get("code") != 404 or not options.create_missing:
            raise _api_error(error)  # NotFoundError for a missing stream
        # StreamConfig.as_dict() of nats-py: durations in nanoseconds, a
        # missing max-age as 0, the other limits left out when not given.
        config: dict[str, Any] = {
            "name": options.stream,
            "subjects": [f"{options.subject_prefix}.>"],
        }
        if options.max_msgs is not None:
            config["max_msgs"] = options.max_msgs
        if options.max_bytes is not None:
            config["max_bytes"] = options.max_bytes
        config.update(
            discard="old",
            discard_new_per_subject=False,
            max_age=_nanoseconds(options.max_age),
            max_msgs_per_subject=-1,
            max_msg_size=-1,
            storage="file",
            no_ack=False,
            duplicate_window=_nanoseconds(options.duplicate_window),
            sealed=False,
            deny_delete=False,
            deny_purge=False,
            allow_rollup_hdrs=False,
        )
        subject = f"$JS.API.STREAM.CREATE.{options.stream}"
        error = self._request(subject, msgspec.json.encode(config), deadline)
        if error is not None and error.get("err_code") != STREAM_NAME_IN_USE:
            raise _api_error(error)  # else made meanwhile by another scheduler

    def _request(self, subject: str, payload: bytes, deadline: float) -> dict[str, Any] | None:
        """A JetStream API request: the error it was answered with, if any.

        Without JetStream (no responders), raises what nats-py raises then.
        """
        token = self._token()
        self._send(
            b"PUB %s %s%d %d\r\n%s\r\n"
            % (subject.encode(), self._inbox, token, len(payload), payload)
        )
        while True:
            replied = self._message(deadline)
            if replied is None or replied[0] != token:
                continue
            status, data = replied[1], replied[2]
            if status == _NO_RESPONDERS:
                # As nats-py's JetStream API requests raise it: JetStream is off.
                from nats.js.errors import ServiceUnavailableError

                raise ServiceUnavailableError()
            return msgspec.json.decode(data, type=_Reply).error

    # ------------------------------------------------------------ publishing

    def publish(self, messages: Sequence[Message]) -> None:
        """Send every message, then read until JetStream acknowledged each."""
        options = self._options
        deadline = time.monotonic() + options.publish_timeout
        if self._socket is None or not self._alive():
            self._connect()
        prefix, deduplicate, inbox = options.subject_prefix, options.deduplicate, self._inbox
        first = self._next + 1
        parts = []
        for token, message in enumerate(messages, first):
            subject, payload, headers = to_record(message, prefix, deduplicate)
            if len(payload) > self._max_payload:
                raise _nats_error("MaxPayloadError")
            head = b"NATS/1.0\r\n%s\r\n" % b"".join(
                b"%s: %s\r\n" % (name.encode(), value.encode()) for name, value in headers.items()
            )
            parts.append(
                b"HPUB %s %s%d %d %d\r\n%s%s\r\n"
                % (
                    subject.encode(),
                    inbox,
                    token,
                    len(head),
                    len(head) + len(payload),
                    head,
                    payload,
                )
            )
        self._next = last = first + len(messages) - 1
        self._send(b"".join(parts), deadline)
        failures: dict[int, Exception] = {}
        waiting = len(messages)
        while waiting:
            replied = self._message(deadline)
            if replied is None or not first <= replied[0] <= last:
                continue  # an answer to an earlier batch, given up on
            token, status, data = replied
            waiting -= 1
            if status == _NO_RESPONDERS:
                # No stream takes the subject (or JetStream is off).
                from nats.js.errors import NoStreamResponseError

                failures[token] = NoStreamResponseError()
                continue
            if b'"error"' in data:
                reply = msgspec.json.decode(data, type=_Reply)
                if reply.error is not None:
                    failures[token] = _api_error(reply.error)
        if failures:
            raise failures[min(failures)]

    # ------------------------------------------------------------ the protocol

    def _token(self) -> int:
        self._next += 1
        return self._next

    def _send(self, data: bytes, deadline: float | None = None) -> None:
        sock = self._socket
        if sock is None or self._aborted:
            self._fail(None)
        try:
            if deadline is not None:
                sock.settimeout(max(deadline - time.monotonic(), 0.001))
            sock.sendall(data)
        except OSError as exc:
            self._fail(exc)

    def _alive(self) -> bool:
        """Read what came since the last batch (the server's PINGs);
        whether the connection is still open."""
        sock = self._socket
        assert sock is not None
        sock.setblocking(False)
        try:
            while chunk := sock.recv(65536):
                self._buffer += chunk
            return False  # closed by the server
        except OSError as exc:
            # Nothing more to read: still open (SSLWantReadError under TLS).
            return isinstance(exc, BlockingIOError) or type(exc).__name__ == "SSLWantReadError"
        finally:
            sock.settimeout(self._options.publish_timeout)

    def _fill(self, deadline: float) -> None:
        sock = self._socket
        if sock is None or self._aborted:
            self._fail(None)
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            self._fail(TimeoutError())
        sock.settimeout(remaining)
        try:
            chunk = sock.recv(65536)
        except OSError as exc:
            self._fail(exc)
        if not chunk:
            self._fail(None)
        self._buffer += chunk

    def _fail(self, cause: OSError | None) -> NoReturn:
        """Close the connection; raise what nats-py raises for ``cause``."""
        aborted = self._aborted
        self.close()
        if aborted:
            raise Aborted(f"the publish to NATS at {self._where} was aborted")
        if isinstance(cause, TimeoutError):
            raise TimeoutError(f"NATS at {self._where} did not answer in time") from None
        raise _lost(cause)

    def _line(self, deadline: float) -> bytes:
        start = 0
        while (end := self._buffer.find(_CRLF, start)) < 0:
            start = max(len(self._buffer) - 1, 0)
            self._fill(deadline)
        line = bytes(self._buffer[:end])
        del self._buffer[: end + 2]
        return line

    def _exactly(self, size: int, deadline: float) -> bytes:
        while len(self._buffer) < size + 2:
            self._fill(deadline)
        data = bytes(self._buffer[:size])
        del self._buffer[: size + 2]
        return data

    def _message(self, deadline: float, op: bytes = b"") -> tuple[int, bytes, bytes] | None:
        """The next operation (or ``op``, read already); for a message to
        the inbox its token, status and payload, else None."""
        op = op or self._line(deadline)
        try:
            if op.startswith(b"MSG "):
                subject, *_, size = op[4:].split()
                return self._token_of(subject), b"", self._exactly(int(size), deadline)
            if op.startswith(b"HMSG "):
                subject, *_, head_size, size = op[5:].split()
                data = self._exactly(int(size), deadline)
                head, payload = data[: int(head_size)], data[int(head_size) :]
                status = head.split(_CRLF, 1)[0][9:12]  # NATS/1.0 503
                return self._token_of(subject), status, payload
            if op == b"PING":
                self._send(b"PONG\r\n")
                return None
            if op.startswith(b"INFO "):
                info = msgspec.json.decode(op[5:])
                self._max_payload = int(info.get("max_payload", self._max_payload))
                return None
            if op in (b"PONG", b"+OK"):
                return None
        except (ValueError, msgspec.DecodeError):
            pass  # a protocol error, below
        if op.startswith(b"-ERR"):
            said = op[5:].decode("utf-8", "replace").strip()
            self.close()
            if "stale connection" in said.lower():
                raise _nats_error("StaleConnectionError")
            raise _nats_error("Error", f"nats: {said}")
        self.close()
        raise _nats_error("ProtocolError") from ValueError(f"got {op[:40]!r} from {self._where}")

    def _token_of(self, subject: bytes) -> int:
        if not subject.startswith(self._inbox):
            return 0
        try:
            return int(subject[len(self._inbox) :])
        except ValueError:
            return 0

    # ------------------------------------------------------------ closing

    def abort(self) -> None:
        """Make a publish blocked on another thread return (Aborted)."""
        self._aborted = True
        sock = self._socket
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        sock, self._socket = self._socket, None
        self._buffer = bytearray()
        if sock is not None:
            sock.close()


def _nanoseconds(seconds: float | None) -> int:
    """A duration as JetStream takes it (and nats-py sends it: none is 0)."""
    return 0 if seconds is None else int(seconds * 1_000_000_000)
