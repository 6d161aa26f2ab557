"""``nats``: NATS JetStream, with nats-py.

Each event is a NATS message on ``<subject-prefix>.<routing key>`` (see
:mod:`dask_eventbus.bindings.nats`) with a ``Nats-Msg-Id`` header, so the
stream drops the copies that a retried publish sends within its duplicate
window. A batch is published asynchronously as a whole, and
:meth:`NatsBackend.publish` returns once JetStream acknowledged every
message, within ``publish-timeout``; it raises otherwise.

nats-py speaks asyncio only: the backend drives it on an event loop in a
thread of its own (:class:`~dask_eventbus.backends.loop.LoopThread`),
started by ``open`` and stopped by ``close``. The connection does not
reconnect by itself: a broken one fails the publish, and the pipeline reopens.

Consumers read with a JetStream pull consumer: an ephemeral one that starts
after the stream's last message (or at its first, ``from_beginning``), or a
durable one shared by every subscriber giving its name, which remembers what
was acknowledged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from typing import Annotated, Any
from urllib.parse import urlsplit

import msgspec
import nats
import nats.errors
from nats.aio.client import Client as NATSClient
from nats.aio.msg import Msg
from nats.js import JetStreamContext, api
from nats.js.errors import APIError, NoStreamResponseError, NotFoundError

from ..bindings.nats import check_subject_prefix, delivery_of, subject_filters, to_record
from ..config import PositiveDuration, redact_url
from .clientlog import ClientLog
from .contract import Backend, Message, NetworkOptions, SubscribeOptions, url_scheme
from .diagnosis import Problem
from .loop import LoopThread
from .subscription import Delivery, ReconnectingSubscription, Subscription
from .tls import TLSOptions

logger = logging.getLogger("distributed.eventbus")

SCHEMES = ("nats", "tls")
# JetStream API error codes the diagnosis names.
_STREAM_NAME_IN_USE = 10058
_SUBJECTS_OVERLAP = 10065
_JETSTREAM_NOT_ENABLED = (10039, 10076)
# Longest wait for a subscriber to connect again, in seconds.
RECONNECT_BOUND = 6.0


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


class NatsBackend(Backend):
    """Publishes events to a JetStream stream, one message per event."""

    name = "nats"
    Options = NatsOptions
    options: NatsOptions
    SubscribeOptions = NatsSubscribeOptions

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self._loop: LoopThread | None = None
        self._client: NATSClient | None = None
        self._js: JetStreamContext | None = None
        self._gone: asyncio.Future[BaseException | None] | None = None
        self._where = ", ".join(redact_url(s) for s in self.options.servers())

    # ------------------------------------------------------------ producer

    def open(self) -> None:
        self.close()
        loop = self._loop = LoopThread("dask-eventbus-nats")
        try:
            self._client, self._gone = loop.run(self._connect(""), self._connect_bound())
            self._js = self._client.jetstream(timeout=self.options.publish_timeout)
            loop.run(self._ensure_stream(self._js), self.options.publish_timeout + 1)
        except BaseException:
            self.close()
            raise

    def publish(self, messages: Sequence[Message]) -> None:
        if self._loop is None or self._js is None or self._gone is None:
            raise RuntimeError("nats backend is not open")
        if not messages:
            return
        timeout = self.options.publish_timeout
        self._loop.run(
            asyncio.wait_for(self._publish(self._js, self._gone, messages), timeout), timeout + 1
        )

    async def _publish(
        self,
        js: JetStreamContext,
        gone: asyncio.Future[BaseException | None],
        messages: Sequence[Message],
    ) -> None:
        prefix, deduplicate = self.options.subject_prefix, self.options.deduplicate
        acks: list[asyncio.Future[api.PubAck]] = []
        try:
            for message in messages:
                subject, payload, headers = to_record(message, prefix, deduplicate)
                acks.append(await js.publish_async(subject, payload, headers=headers))
            every = asyncio.gather(*acks, return_exceptions=True)
            either: list[asyncio.Future[Any]] = [every, gone]
            await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
            if not every.done():
                every.cancel()
                # Closed before every acknowledgement came: by what closed it.
                raise nats.errors.ConnectionClosedError() from gone.result()
            failures = [r for r in every.result() if isinstance(r, BaseException)]
        finally:
            for ack in acks:
                if not ack.done():
                    ack.cancel()
        if failures:
            raise failures[0]

    def abort(self) -> None:
        loop = self._loop
        if loop is not None:
            loop.cancel()

    def close(self) -> None:
        loop, client = self._loop, self._client
        self._loop = self._client = self._js = self._gone = None
        if loop is None:
            return
        if client is not None:
            try:
                loop.run(
                    asyncio.wait_for(client.close(), self.options.connect_timeout),
                    self.options.connect_timeout + 1,
                )
            except BaseException:
                logger.debug("dask-eventbus: closing the NATS connection failed", exc_info=True)
        loop.stop()

    # ------------------------------------------------------------ connections

    def _connect_bound(self) -> float:
        # nats-py tries each server twice, each within connect-timeout.
        return 2 * len(self.options.servers()) * self.options.connect_timeout + 1

    async def _connect(self, role: str) -> tuple[NATSClient, asyncio.Future[BaseException | None]]:
        """A connection that does not reconnect by itself, and a future set
        when it closed (to the error that closed it, if any)."""
        options = self.options
        gone: asyncio.Future[BaseException | None] = asyncio.get_running_loop().create_future()
        errors: list[BaseException] = []
        client = _TLSOnlyClient() if options.wants_tls() else NATSClient()

        client_log = ClientLog(logger, "nats-py", self.mask)

        async def error_cb(exc: Exception) -> None:
            errors.append(exc)
            client_log.log(logging.ERROR, repr(exc))

        async def closed_cb() -> None:
            if not gone.done():
                gone.set_result(client.last_error)

        kwargs: dict[str, Any] = {
            "servers": options.servers(),
            "allow_reconnect": False,
            "max_reconnect_attempts": 1,
            "reconnect_time_wait": 0.1,
            "connect_timeout": options.connect_timeout,
            "error_cb": error_cb,
            "closed_cb": closed_cb,
            "dont_randomize": True,
        }
        if options.connection_name:
            kwargs["name"] = options.connection_name + role
        if options.user is not None:
            kwargs.update(user=options.user, password=options.password)
        if options.token is not None:
            kwargs["token"] = options.token
        if options.creds_file is not None:
            kwargs["user_credentials"] = options.creds_file
        if options.nkey_seed_file is not None:
            kwargs["nkeys_seed"] = options.nkey_seed_file
        if options.wants_tls():
            tls = options.tls or TLSOptions()
            kwargs["tls"] = tls.context()
            if tls.server_hostname:
                kwargs["tls_hostname"] = tls.server_hostname
        try:
            await client.connect(**kwargs)
        except BaseException as exc:
            # nats-py leaves the socket of a failed attempt open; closing it
            # after a failed TLS handshake may wait for the peer.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.close(), 1.0)
            if isinstance(exc, nats.errors.NoServersError):
                raise exc from (errors[-1] if errors else None)
            raise
        return client, gone

    async def _ensure_stream(self, js: JetStreamContext) -> None:
        options = self.options
        try:
            await js.stream_info(options.stream)
            return
        except NotFoundError:
            if not options.create_missing:
                raise
        config = api.StreamConfig(
            name=options.stream,
            subjects=[f"{options.subject_prefix}.>"],
            storage=api.StorageType.FILE,
            max_age=options.max_age,
            max_bytes=options.max_bytes,
            max_msgs=options.max_msgs,
            duplicate_window=options.duplicate_window,
        )
        try:
            await js.add_stream(config)
        except APIError as exc:
            if exc.err_code != _STREAM_NAME_IN_USE:  # made meanwhile by another scheduler
                raise

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
        filters = options.subjects or subject_filters(self.options.subject_prefix, options.types)
        reader = _JetStreamReader(
            self, options.from_beginning, options.durable, filters, options.count
        )
        try:
            reader.start()
        except BaseException:
            reader.close(ack=False)
            raise
        return reader

    # ------------------------------------------------------------ for people

    def describe(self) -> str:
        return (
            f"NATS JetStream stream {self.options.stream!r} (subjects "
            f"{self.options.subject_prefix}.>) at {self._where}"
        )

    def broker(self) -> str:
        return f"NATS at {self._where}"

    def classify(self, exc: BaseException) -> Problem | None:
        stream, prefix = self.options.stream, self.options.subject_prefix
        detail = f"{type(exc).__name__}: {exc}"
        if isinstance(exc, nats.errors.NoServersError):
            return Problem("connect", "no server available")
        if isinstance(exc, nats.errors.AuthorizationError) or "authoriz" in detail.lower():
            fix = "check user/password, token, creds-file or nkey-seed-file"
            return Problem("authentication", detail, fix=fix)
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
        if isinstance(exc, asyncio.CancelledError):
            return Problem("said", f"the publish to {self.broker()} was aborted")
        if isinstance(exc, (TimeoutError, asyncio.TimeoutError, nats.errors.TimeoutError)):
            return Problem("timeout", detail)
        if isinstance(exc, (nats.errors.ConnectionClosedError, nats.errors.StaleConnectionError)):
            return Problem("lost", repr(exc.__cause__) if exc.__cause__ is not None else "")
        return None


class _TLSOnlyClient(NATSClient):
    """A nats-py client that refuses a server without TLS before it sends
    anything (credentials): nats-py itself only upgrades a connection to TLS
    when the server requires it, even for a ``tls://`` URL."""

    def _connect_command(self) -> bytes:
        if not self._server_info.get("tls_required"):
            raise nats.errors.SecureConnWantedError()
        command: bytes = super()._connect_command()
        return command


class _JetStreamReader(ReconnectingSubscription):
    """A pull consumer on a connection of its own, on a loop of its own."""

    connection_errors = (nats.errors.Error, APIError, OSError)

    def __init__(
        self,
        backend: NatsBackend,
        from_beginning: bool,
        durable: str | None,
        filters: list[str] | None,
        count: int,
    ) -> None:
        super().__init__("NATS", backend.explain)
        self._backend = backend
        self._options = backend.options
        self._from_beginning = from_beginning
        self._durable = durable
        self._filters = filters
        self._count = count
        self._loop = LoopThread("dask-eventbus-nats-subscriber")
        self._client: NATSClient | None = None
        self._pull: JetStreamContext.PullSubscription | None = None
        self._consumer: str | None = None
        # The stream sequence of the last message received: an ephemeral
        # consumer made again after a reconnection starts after it.
        self._last_sequence: int | None = None
        # Reply subjects of deliveries not acknowledged, in the order received.
        self._outstanding: dict[str, None] = {}

    def _connect(self) -> None:
        if self._consumer is None:
            bound = self._backend._connect_bound() + self._options.publish_timeout
        else:
            # Reconnecting within a fetch: bounded near the caller's wait.
            bound = RECONNECT_BOUND
        self._loop.run(self._attach(), bound)

    async def _attach(self) -> None:
        client, _ = await self._backend._connect("-subscriber")
        try:
            js = client.jetstream(timeout=self._options.publish_timeout)
            stream = self._options.stream
            # Subscribers may come first: the stream then keeps what follows.
            await self._backend._ensure_stream(js)
            if self._durable is not None:
                try:
                    await js.consumer_info(stream, self._durable)
                except NotFoundError:
                    await js.add_consumer(stream, self._config(client, durable=self._durable))
                name = self._durable
            else:
                if self._last_sequence is None and not self._from_beginning:
                    info = await js.stream_info(stream)
                    self._last_sequence = info.state.last_seq
                made = await js.add_consumer(stream, self._config(client))
                name = made.name
            self._pull = await js.pull_subscribe_bind(consumer=name, stream=stream)
        except BaseException:
            await client.close()
            raise
        self._client, self._consumer = client, name

    def _config(self, client: NATSClient, durable: str | None = None) -> api.ConsumerConfig:
        config = api.ConsumerConfig(durable_name=durable, ack_policy=api.AckPolicy.EXPLICIT)
        if durable is None:
            config.inactive_threshold = 60.0
            if self._last_sequence is not None:
                config.deliver_policy = api.DeliverPolicy.BY_START_SEQUENCE
                config.opt_start_seq = self._last_sequence + 1
        elif not self._from_beginning:
            config.deliver_policy = api.DeliverPolicy.NEW
        if self._filters and len(self._filters) == 1:
            config.filter_subject = self._filters[0]
        elif self._filters and _takes_filter_subjects(client):
            config.filter_subjects = self._filters
        return config

    def _read(self, timeout: float) -> list[Delivery]:
        pull, client = self._pull, self._client
        assert pull is not None and client is not None
        try:
            messages = self._loop.run(
                pull.fetch(self._count, timeout=max(timeout, 0.05)), timeout + 5
            )
        except (nats.errors.TimeoutError, TimeoutError):
            # Nothing arrived in time, or the connection is gone.
            if client.is_closed:
                raise nats.errors.ConnectionClosedError() from None
            return []
        deliveries = []
        for message in messages:
            self._last_sequence = message.metadata.sequence.stream
            self._outstanding[message.reply] = None
            deliveries.append(delivery_of(message.data, message.headers, message))
        return deliveries

    def _disconnect(self) -> None:
        client, self._client, self._pull = self._client, None, None
        self._outstanding.clear()  # the server delivers them again
        if client is not None:
            try:
                self._loop.run(asyncio.wait_for(client.close(), 2.0), 3.0)
            except BaseException:
                logger.debug("dask-eventbus: closing the NATS subscriber failed", exc_info=True)

    def _acknowledge(self, token: Any) -> None:
        message: Msg = token
        client = self._client
        if client is None or message.reply not in self._outstanding:
            return
        del self._outstanding[message.reply]
        self._loop.submit(_send(client, message.reply, b"+ACK"))

    def _close(self) -> None:
        client = self._client
        try:
            if client is not None:
                # Hand back what was fetched and not acknowledged at once,
                # rather than after the ack wait.
                for reply in self._outstanding:
                    self._loop.submit(_send(client, reply, b"-NAK"))
                if self._durable is None and self._consumer is not None:
                    self._loop.run(self._delete_consumer(client), 3.0)
        except BaseException:
            logger.debug("dask-eventbus: releasing the NATS consumer failed", exc_info=True)
        finally:
            self._disconnect()
            self._loop.stop()

    async def _delete_consumer(self, client: NATSClient) -> None:
        assert self._consumer is not None
        await client.jetstream().delete_consumer(self._options.stream, self._consumer)


async def _send(client: NATSClient, subject: str, payload: bytes) -> None:
    try:
        await client.publish(subject, payload)
    except nats.errors.Error:
        logger.debug("dask-eventbus: could not send %r to NATS", payload, exc_info=True)


def _takes_filter_subjects(client: NATSClient) -> bool:
    """Whether the server takes several filter subjects per consumer (2.10+)."""
    version = str(client._server_info.get("version", "0.0"))
    try:
        major, minor = (int(part) for part in version.split(".")[:2])
    except ValueError:
        return False
    return (major, minor) >= (2, 10)
