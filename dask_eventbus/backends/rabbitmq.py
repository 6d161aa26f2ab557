"""``rabbitmq``: events published to a RabbitMQ exchange with pika, confirmed.

The publisher owns one pika :class:`~pika.SelectConnection` with its own I/O
loop, driven only from the pipeline's publisher thread: ``publish`` writes the
whole batch to the channel, then runs the loop until the broker has confirmed
every message (publisher confirms, ``multiple`` acks included), a nack or a
returned mandatory message arrives, the channel or connection closes, or
``publish-timeout`` passes. Any of those but the first raises, and the
pipeline retries the batch on a new connection.

Consumers (:mod:`.rabbitmq_reader`) get a queue of their own (exclusive,
deleted when they disconnect) or a named durable one, bound to the exchange
with routing-key patterns.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Annotated, Any, Literal
from urllib.parse import quote

import msgspec
import pika
import pika.exceptions as pe
from pika.adapters.select_connection import IOLoop, SelectConnection
from pika.adapters.utils.connection_workflow import (
    AMQPConnectionWorkflowFailed,
    AMQPConnectorPhaseErrorBase,
    AMQPConnectorStackTimeout,
)

from ..bindings.amqp import (
    AmqpSubscribeOptions,
    ExchangeSpec,
    PublisherConfirms,
    QueueSpec,
    Topology,
    check_routing_key,
    not_found,
    properties_of,
    queue_arguments,
    routing_key_function,
)
from ..config import Duration, PositiveDuration, redact_url
from .clientlog import QuietLibrary
from .contract import Backend, Message, NetworkOptions, url_scheme
from .tls import TLSOptions

if TYPE_CHECKING:
    from .diagnosis import Problem
    from .subscription import Subscription

# Under distributed's logger, so that a scheduler's logging config covers it.
logger = logging.getLogger("distributed.eventbus.rabbitmq")

# pika logs one failed connection attempt as half a dozen ERROR records
# (with tracebacks for TLS errors).
_quiet = QuietLibrary("pika")


# How long close() waits for the broker to answer Connection.Close before it
# drops the socket.
CLOSE_WAIT = 2.0


class RabbitMQError(Exception):
    """A publish or subscribe failure this backend detected itself.

    Raised for nacks, returned (unroutable) mandatory messages and timeouts;
    the message says what happened and what to do about it.
    """


class RabbitMQOptions(NetworkOptions):
    aliases = {"declare": ("create-missing",)}

    url: str = "amqp://localhost:5672/%2F"
    exchange: str = "dask-events"
    exchange_type: Literal["topic", "direct", "fanout", "headers"] = "topic"
    durable: bool = True
    persistent: bool = True
    routing_key: str | None = None
    confirm: bool = True
    mandatory: bool = False
    create_missing: bool = True
    queue: str | None = None
    queue_max_length: Annotated[int, msgspec.Meta(ge=1)] | None = None
    queue_message_ttl: Duration | None = None
    queue_arguments: dict[str, Any] = msgspec.field(default_factory=dict)
    connection_name: str = "dask-eventbus"
    publish_timeout: PositiveDuration = PositiveDuration(30.0)
    tls: TLSOptions | None = None

    def __post_init__(self) -> None:
        scheme = url_scheme(self.url, ("amqp", "amqps"), tls=("amqps",))
        try:
            pika.URLParameters(self.url)
        except Exception as exc:
            raise ValueError(f"url is not a valid RabbitMQ URL: {redact_url(str(exc))}") from None
        if self.tls is not None and scheme != "amqps":
            raise ValueError("tls options need an amqps:// url (TLS is off for amqp://)")
        if self.routing_key is not None:
            check_routing_key(self.routing_key)
        if self.queue is not None and not self.queue:
            raise ValueError("queue must be a queue name, or null for none")
        if self.queue and not self.exchange:
            raise ValueError(
                "queue needs a named exchange to bind to; the default exchange ('') "
                "routes by queue name only"
            )
        if self.queue and self.exchange_type == "direct":
            raise ValueError(
                "queue is bound with '#' (every event), which a direct exchange cannot "
                "do: use a topic or fanout exchange, or bind your own queues"
            )
        if self.queue_message_ttl is not None and self.queue_message_ttl < 0.001:
            raise ValueError("queue-message-ttl must be at least 1ms")


def _nothing() -> None:
    pass


def _call_now(what: str, method: Callable[..., Any], **arguments: Any) -> Any:
    return method(**arguments)


def _declare(
    channel: Any,
    exchange: ExchangeSpec,
    queue: QueueSpec | None,
    call: Callable[..., Any] = _call_now,
) -> str:
    """Declare ``exchange`` and ``queue`` with pika's channel methods, each
    run by ``call(what, method, **arguments)``, which returns its reply.
    Returns the queue's name (the broker names a subscriber's own)."""
    if exchange.declared:
        call(
            f"declaring exchange {exchange.name!r}",
            channel.exchange_declare,
            exchange=exchange.name,
            exchange_type=exchange.type,
            durable=exchange.durable,
        )
    if queue is None:
        return ""
    declared = call(
        f"declaring queue {queue.name!r}",
        channel.queue_declare,
        queue=queue.name,
        durable=queue.durable,
        exclusive=queue.temporary,
        auto_delete=queue.temporary,
        arguments=queue.arguments or None,
    )
    name: str = declared.method.queue
    for key in queue.keys:
        call(
            f"binding queue {name!r}",
            channel.queue_bind,
            queue=name,
            exchange=exchange.name,
            routing_key=key,
        )
    return name


class RabbitMQBackend(Backend):
    """Publishes to a RabbitMQ exchange with publisher confirms (pika)."""

    name = "rabbitmq"
    Options = RabbitMQOptions
    options: RabbitMQOptions
    SubscribeOptions = AmqpSubscribeOptions

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self._routing_key = routing_key_function(self.options.routing_key)
        self._ioloop: Any = None
        self._connection: Any = None
        self._channel: Any = None
        self._failure: BaseException | None = None
        self._blocked: str | None = None
        self._confirms = PublisherConfirms()
        self._returned: list[tuple[int, str, str]] = []

    # ---------------------------------------------------------------- helpers

    def topology(self) -> Topology:
        """The exchange, and the durable ``queue`` bound to every event, to declare."""
        options = self.options
        return Topology(
            ExchangeSpec(
                options.exchange, options.exchange_type, options.durable, options.create_missing
            ),
            options.queue,
            queue_arguments=queue_arguments(
                options.queue_arguments, options.queue_max_length, options.queue_message_ttl
            ),
        )

    def parameters(self) -> pika.URLParameters:
        """pika connection parameters: the URL, TLS options, a connection name."""
        options = self.options
        params = pika.URLParameters(options.url)
        if options.tls is not None:
            params.ssl_options = _ssl_options(options.tls)
        if "stack_timeout=" not in options.url:
            params.stack_timeout = options.connect_timeout
        params.client_properties = {
            "connection_name": options.connection_name,
            **(params.client_properties or {}),
        }
        return params

    def location(self) -> str:
        """``amqp://user@host:port/vhost``, without the password."""
        params = pika.URLParameters(self.options.url)
        scheme = "amqps" if params.ssl_options is not None else "amqp"
        user = getattr(params.credentials, "username", "")
        vhost = quote(params.virtual_host, safe="")
        return f"{scheme}://{user}@{params.host}:{params.port}/{vhost}"

    def describe(self) -> str:
        options = self.options
        target = (
            f"exchange {options.exchange!r} ({options.exchange_type})"
            if options.exchange
            else "the default exchange"
        )
        queue = f", queue {options.queue!r}" if options.queue else ""
        return f"RabbitMQ {target}{queue} at {self.location()}"

    # ---------------------------------------------------------------- producer

    @_quiet
    def open(self) -> None:
        self.close()
        options = self.options
        deadline = time.monotonic() + options.connect_timeout
        self._failure = None
        self._blocked = None
        self._confirms = PublisherConfirms()
        self._returned = []
        ioloop = self._ioloop = IOLoop()
        ioloop.activate_poller()
        opened: list[Any] = []
        try:
            connection = self._connection = SelectConnection(
                self.parameters(),
                on_open_callback=opened.append,
                on_open_error_callback=self._on_connection_failure,
                on_close_callback=self._on_connection_failure,
                custom_ioloop=ioloop,
            )
            limit = options.connect_timeout
            self._wait(lambda: bool(opened), deadline, "connecting", limit)
            connection.add_on_connection_blocked_callback(self._on_blocked)
            connection.add_on_connection_unblocked_callback(self._on_unblocked)
            channels: list[Any] = []
            connection.channel(on_open_callback=channels.append)
            self._wait(lambda: bool(channels), deadline, "opening a channel", limit)
            channel = self._channel = channels[0]
            channel.add_on_close_callback(self._on_channel_closed)
            channel.add_on_return_callback(self._on_return)
            if options.confirm:
                self._call(
                    "enabling publisher confirms",
                    deadline,
                    channel.confirm_delivery,
                    self._on_confirm,
                )
            topology = self.topology()
            _declare(
                channel,
                topology.exchange,
                topology.publisher_queue(),
                lambda what, method, **arguments: self._call(what, deadline, method, **arguments),
            )
        except BaseException:
            self.close()
            raise

    @_quiet
    def publish(self, messages: Sequence[Message]) -> None:
        if not messages:
            return
        if not self._usable():
            if self._connection is not None:
                # Connections die while idle (broker restarts, operators, missed
                # heartbeats while no batch kept the I/O loop running). Nothing
                # of this batch was sent yet, so reconnecting is safe.
                logger.info(
                    "dask-eventbus: the RabbitMQ connection was closed while idle (%s); "
                    "reconnecting",
                    self.explain(self._failure) if self._failure else "closed",
                )
            self.open()
        try:
            self._publish(messages)
        except BaseException:
            # Whatever was sent, the delivery tags no longer tell which events
            # the broker has: the next publish starts on a new connection.
            self.close()
            raise

    def _publish(self, messages: Sequence[Message]) -> None:
        options = self.options
        limit = options.publish_timeout
        deadline = time.monotonic() + limit
        exchange, mandatory = options.exchange, options.mandatory
        routing_key = self._routing_key
        basic_publish = self._channel.basic_publish
        properties = pika.BasicProperties
        delivery_mode = 2 if options.persistent else 1
        with_headers = options.exchange_type == "headers"
        for message in messages:
            basic_publish(
                exchange,
                routing_key(message),
                message.body,
                properties(
                    delivery_mode=delivery_mode,
                    headers=(
                        {"type": message.type, "subject": message.subject} if with_headers else None
                    ),
                    **properties_of(message),
                ),
                mandatory,
            )
        confirms = self._confirms
        confirms.expect(len(messages))
        if options.confirm:
            self._wait(
                lambda: not confirms.unsettled or bool(confirms.nacked or self._returned),
                deadline,
                f"waiting for the broker to confirm {len(messages)} events",
                limit,
            )
            if confirms.nacked or self._returned:
                raise self._rejection(len(messages))
        else:
            connection = self._connection
            self._wait(
                lambda: connection._get_write_buffer_size() == 0,
                deadline,
                f"sending {len(messages)} events",
                limit,
            )

    def _rejection(self, count: int) -> RabbitMQError:
        if self._confirms.nacked:
            return RabbitMQError(
                f"the broker rejected {self._confirms.nacked} of {count} events (basic.nack): "
                "a queue refused them (x-overflow reject-publish at its max-length) or "
                "the broker had an internal error; retrying"
            )
        code, text, key = self._returned[0]
        return RabbitMQError(
            f"{len(self._returned)} of {count} events were returned as unroutable "
            f"({code} {text}): no queue is bound to exchange {self.options.exchange!r} "
            f"for routing key {key!r}. Bind a queue, or set mandatory: false to let "
            "the exchange drop events nobody listens to"
        )

    @_quiet
    def close(self) -> None:
        connection, self._connection = self._connection, None
        ioloop, self._ioloop = self._ioloop, None
        self._channel = None
        if connection is not None:
            try:
                if connection.is_open or not (connection.is_closing or connection.is_closed):
                    connection.close()
                deadline = time.monotonic() + CLOSE_WAIT
                timer = ioloop.call_later(CLOSE_WAIT, _nothing)
                while not connection.is_closed and time.monotonic() < deadline:
                    ioloop.poll()
                    ioloop.process_timeouts()
                ioloop.remove_timeout(timer)
                if not connection.is_closed:
                    # A stalled broker never answers Connection.Close: drop the socket.
                    connection._adapter_disconnect_stream()
                    ioloop.poll()
                    ioloop.process_timeouts()
            except Exception:
                logger.debug("dask-eventbus: closing the RabbitMQ connection failed", exc_info=True)
        if ioloop is not None:
            with contextlib.suppress(Exception):
                ioloop.close()

    # ---------------------------------------------------------------- I/O loop

    def _usable(self) -> bool:
        connection, channel = self._connection, self._channel
        if connection is None or channel is None or self._failure is not None:
            return False
        self._pump()
        return self._failure is None and connection.is_open and channel.is_open

    def _pump(self) -> None:
        """Handle what already arrived (a close from the broker), without waiting."""
        ioloop = self._ioloop
        timer = ioloop.call_later(0, _nothing)
        try:
            ioloop.poll()
            ioloop.process_timeouts()
        finally:
            ioloop.remove_timeout(timer)

    def _wait(self, done: Callable[[], bool], deadline: float, what: str, limit: float) -> None:
        """Run the I/O loop until ``done()``; raise on failure or at ``deadline``."""
        ioloop = self._ioloop
        timer = None
        try:
            while True:
                if done():
                    return
                if self._failure is not None:
                    raise self._failure
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise self._timeout(what, limit)
                if timer is None:
                    # Wakes the poller at the deadline at the latest.
                    timer = ioloop.call_later(remaining, _nothing)
                ioloop.poll()
                ioloop.process_timeouts()
        finally:
            if timer is not None:
                ioloop.remove_timeout(timer)

    def _timeout(self, what: str, limit: float) -> RabbitMQError:
        blocked = (
            f"; the broker is blocking publishers ({self._blocked}): it is short of "
            "memory or disk, see its resource alarms"
            if self._blocked
            else ""
        )
        return RabbitMQError(
            f"RabbitMQ at {self.location()} did not answer within {limit:g}s while {what}{blocked}"
        )

    def _call(self, what: str, deadline: float, method: Any, *args: Any, **kwargs: Any) -> Any:
        """Run the asynchronous ``method`` and wait for its reply."""
        done: list[Any] = []
        method(*args, callback=done.append, **kwargs)
        self._wait(lambda: bool(done), deadline, what, self.options.connect_timeout)
        return done[0]

    # ---------------------------------------------------------------- callbacks

    def _on_connection_failure(self, connection: Any, error: BaseException) -> None:
        if connection is self._connection and self._failure is None:
            self._failure = error

    def _on_channel_closed(self, channel: Any, error: BaseException) -> None:
        if channel is self._channel and self._failure is None:
            self._failure = error

    def _on_blocked(self, connection: Any, frame: Any) -> None:
        self._blocked = getattr(frame.method, "reason", None) or "connection.blocked"

    def _on_unblocked(self, connection: Any, frame: Any) -> None:
        self._blocked = None

    def _on_confirm(self, frame: Any) -> None:
        method = frame.method
        refused = isinstance(method, pika.spec.Basic.Nack)
        self._confirms.settle(method.delivery_tag, method.multiple, refused=refused)

    def _on_return(self, channel: Any, method: Any, properties: Any, body: bytes) -> None:
        self._returned.append((method.reply_code, method.reply_text, method.routing_key))

    # ---------------------------------------------------------------- diagnosis

    def broker(self) -> str:
        return f"RabbitMQ at {self.location()}"

    def classify(self, exc: BaseException) -> Problem | None:
        from .diagnosis import Problem, network_problem  # here: only an error needs it

        cause = _root_cause(exc)
        credentials = pika.URLParameters(self.options.url).credentials
        user = f"user {getattr(credentials, 'username', '?')!r}"
        if isinstance(cause, RabbitMQError):
            return Problem("said", str(cause))
        if isinstance(cause, pe.ProbableAuthenticationError | pe.AuthenticationError):
            return Problem(
                "authentication", "", user, "check the user name and password in the url"
            )
        if isinstance(cause, pe.ProbableAccessDeniedError):
            fix = (
                "access to the virtual host was refused: create the vhost or grant the "
                "user permissions on it"
            )
            return Problem("permission", _reply(cause), user, fix)
        if isinstance(cause, AMQPConnectorStackTimeout):
            return Problem("timeout", str(cause))
        if isinstance(cause, pe.ConnectionBlockedTimeout):
            fix = (
                "it blocked publishing for longer than blocked_connection_timeout: it is "
                "short of memory or disk, see its resource alarms"
            )
            return Problem("refused", "", "to take events", fix)
        if isinstance(cause, pe.AMQPHeartbeatTimeout):
            return Problem("lost", "it stopped sending heartbeats")
        if isinstance(cause, pe.ChannelClosedByBroker):
            return _channel_problem(cause)
        if isinstance(cause, pe.ConnectionClosedByBroker):
            why = f"it closed the connection ({_reply(cause)})"
            return Problem("lost", f"{why}: the broker is restarting or an operator closed it")
        if isinstance(cause, pe.StreamLostError):
            return Problem("lost", str(cause))
        if isinstance(cause, pe.AMQPError):
            return Problem("refused", f"{type(cause).__name__}: {cause!r}")
        # Under pika's connection-workflow wrappers, where the framework does not look.
        return network_problem(cause)

    # ---------------------------------------------------------------- consumer

    def open_subscription(self, options: AmqpSubscribeOptions) -> Subscription:
        """Consume events through a queue bound to the exchange.

        ``bindings`` are the routing-key patterns to bind the queue with
        (default ``["#"]``: everything); ``prefetch`` is how many
        unacknowledged events the broker sends ahead.

        Without a ``queue`` (here or in the options) the queue is exclusive
        and deleted when the subscription ends, so it receives only events
        published after ``subscribe`` returns. With one it is that durable
        queue, which holds whatever was routed to it while nobody consumed.
        """
        bindings = options.bindings or ["#"]
        keys = [bindings] if isinstance(bindings, str) else list(bindings)
        self.topology().check_subscription(
            keys, options.queue, options.from_beginning, "eventbus.backends.rabbitmq"
        )
        from .rabbitmq_reader import RabbitMQSubscription

        subscription = RabbitMQSubscription(
            self, keys, options.queue or self.options.queue, options.prefetch
        )
        try:
            subscription.start()
        except Exception as exc:
            raise RabbitMQError(self.explain(exc)) from exc
        return subscription


def _channel_problem(cause: pe.ChannelClosedByBroker) -> Problem:
    from .diagnosis import Problem

    text = cause.reply_text
    if cause.reply_code == 404:
        return not_found(text, _reply(cause))
    if cause.reply_code == 406:
        fix = (
            "an exchange or queue of that name exists with other settings: match "
            "exchange-type, durable and the queue options, or delete it"
        )
        return Problem("refused", _reply(cause), fix=fix)
    if cause.reply_code == 403:
        return Problem("permission", _reply(cause), fix="grant the user access")
    return Problem("refused", _reply(cause), "the channel (closed it)")


def _reply(error: pe.ConnectionClosed | pe.ChannelClosed | BaseException) -> str:
    code = getattr(error, "reply_code", None)
    text = getattr(error, "reply_text", None)
    if code is None:
        args = getattr(error, "args", ())
        nested = args[0] if args and isinstance(args[0], str) else ""
        return nested or type(error).__name__
    return f"{code} {text}"


def _root_cause(exc: BaseException) -> BaseException:
    """The exception under pika's connection-workflow wrappers."""
    seen = 0
    while seen < 10:
        seen += 1
        if isinstance(exc, AMQPConnectionWorkflowFailed) and exc.exceptions:
            exc = exc.exceptions[-1]
        elif isinstance(exc, AMQPConnectorPhaseErrorBase):
            exc = exc.exception
        elif (
            type(exc) is pe.AMQPConnectionError
            and exc.args
            and isinstance(exc.args[0], BaseException)
        ):
            exc = exc.args[0]
        else:
            break
    return exc


def _ssl_options(tls: TLSOptions) -> pika.SSLOptions:
    return pika.SSLOptions(tls.context(), server_hostname=tls.server_hostname)
