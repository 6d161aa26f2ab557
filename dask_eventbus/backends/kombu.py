"""``kombu``: events through any transport Kombu speaks, chosen by one URL.

Kombu is how much of the Python world (Celery above all) talks to brokers:
``amqp://`` (RabbitMQ through py-amqp), ``redis://``, ``sqs://``,
``memory://``, ``filesystem://`` and more. Events are published to an
exchange (``dask-events``, topic, by default) with the same routing keys as
the ``rabbitmq`` backend: the event type, plus ``.<start>.<finish>`` for task
transitions.

Bodies go out untouched: the CloudEvents JSON bytes with an explicit
``content_type`` (``application/cloudevents+json``) and ``content_encoding``
(``utf-8``), so Kombu never serializes them itself (no pickle, no JSON in
JSON). ``publish`` uses no Kombu retry (``retry=False``, no ``ensure``): it
raises, and the pipeline retries with its own backoff. On py-amqp transports
publisher confirms are on by default (``confirm_publish``), so ``publish``
returns only once the broker confirmed every message. py-amqp would wait for
each message's confirm before sending the next; this backend sends the whole
batch and then waits for its confirms once, as the ``rabbitmq`` backend does.

Consumers (:mod:`.kombu_reader`) read a queue of their own, or a named one,
bound to the exchange with routing-key patterns.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import socket
import ssl
import time
import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING, Annotated, Any, Literal
from urllib.parse import urlsplit

import msgspec
from amqp.exceptions import MessageNacked
from kombu import Connection, Consumer, Exchange, Producer, Queue, binding
from kombu.exceptions import KombuError
from kombu.transport import TRANSPORT_ALIASES

from ..bindings.amqp import (
    AmqpSubscribeOptions,
    ExchangeSpec,
    PublisherConfirms,
    QueueSpec,
    Topology,
    check_routing_key,
    not_found,
    properties_of,
    routing_key_function,
)
from ..config import ConfigError
from .contract import (
    BATCH_CONTENT_TYPE,
    Backend,
    Message,
    NetworkOptions,
)
from .tls import TLSOptions, deprecated

if TYPE_CHECKING:
    from .diagnosis import Problem
    from .subscription import Subscription

CONTENT_TYPE = "application/cloudevents+json"
CONTENT_ENCODING = "utf-8"
logger = logging.getLogger("distributed.eventbus.kombu")

# Placeholders a routing-key template may use (as in the rabbitmq backend).
# AMQP routing keys are short strings.

# pip extras of kombu that bring a transport's client library.
_TRANSPORT_EXTRAS = {
    "sqs": "sqs",
    "SQS": "sqs",
    "mongodb": "mongodb",
    "zookeeper": "zookeeper",
    "sqlalchemy": "sqlalchemy",
    "sqla": "sqlalchemy",
    "slmq": "slmq",
    "SLMQ": "slmq",
    "consul": "consul",
    "etcd": "etcd",
    "azurestoragequeues": "azurestoragequeues",
    "azureservicebus": "azureservicebus",
    "confluentkafka": "confluentkafka",
    "kafka": "confluentkafka",
    "gcpubsub": "gcpubsub",
    "librabbitmq": "librabbitmq",
    "qpid": "qpid",
    "pyro": "pyro",
    "pgmq": "pgmq",
    "redis": "redis",
    "rediss": "redis",
    "sentinel": "redis",
}


def _transport_alias(url: str) -> str:
    """``amqp`` for ``amqp://...``, ``sqla`` for ``sqla+postgresql://...``."""
    scheme = url.split(";", 1)[0].split("://", 1)[0] if "://" in url else url
    return scheme.split("+", 1)[0]


class KombuOptions(NetworkOptions):
    url: str = "amqp://guest:guest@localhost:5672//"
    exchange: Annotated[str, msgspec.Meta(min_length=1)] = "dask-events"
    exchange_type: Literal["topic", "direct", "fanout"] = "topic"
    routing_key: str | None = None
    durable: bool = True
    create_missing: bool = True
    # Two literals, not one mixed: msgspec before 0.22 cannot sort str with int.
    delivery_mode: Literal["persistent", "transient"] | Literal[1, 2] = "persistent"
    transport_options: dict[str, Any] = msgspec.field(default_factory=dict)
    queue: Annotated[str, msgspec.Meta(min_length=1)] | None = None
    queue_arguments: dict[str, Any] = msgspec.field(default_factory=dict)
    bindings: Annotated[list[str], msgspec.Meta(min_length=1)] = msgspec.field(
        default_factory=lambda: ["#"]
    )
    tls: TLSOptions | None = None
    # Deprecated: the tls block replaces it.
    ssl: bool | dict[str, Any] | None = None

    def __post_init__(self) -> None:
        alias = _transport_alias(self.url)
        if alias not in TRANSPORT_ALIASES and "." not in alias:
            known = ", ".join(sorted({f"{name.lower()}://" for name in TRANSPORT_ALIASES}))
            raise ValueError(
                f"url: unknown Kombu transport {alias!r}; expected a URL such as "
                f"amqp://user:password@host:5672// or redis://host:6379/0 (known: {known})"
            )
        if self.ssl is not None:
            deprecated("ssl", "kombu")
            if self.tls is not None:
                raise ValueError("give the tls block or the deprecated ssl option, not both")
        if self.tls is not None:
            _check_tls(self.tls, alias)
        if self.routing_key is not None:
            check_routing_key(self.routing_key)
        if not self.create_missing and alias not in ("amqp", "amqps", "pyamqp"):
            raise ValueError(
                "create-missing: false needs an amqp:// url: other transports keep "
                "their exchanges in the client, which must declare them"
            )


class KombuBackend(Backend):
    """Publishes events with a Kombu ``Producer`` to an exchange."""

    name = "kombu"
    Options = KombuOptions
    SubscribeOptions = AmqpSubscribeOptions
    # Kombu's serializer registry imports both to offer them; events go out as
    # bytes Kombu never serializes. PyYAML alone is a sixth of the start.
    unused_when_publishing = ("yaml", "msgpack")
    options: KombuOptions

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        o = self.options
        self._alias = _transport_alias(o.url)
        try:
            probe = Connection(o.url)
            transport = probe.get_transport_cls()
        except ImportError as exc:
            extra = _TRANSPORT_EXTRAS.get(self._alias, self._alias)
            raise ConfigError(
                f"Invalid event bus config eventbus.backends.kombu.url: the Kombu "
                f"{self._alias!r} transport needs a library that is not installed "
                f"({exc}). To fix this: pip install 'kombu[{extra}]'"
            ) from None
        self._driver = str(getattr(transport, "driver_type", self._alias))
        if self._alias == "memory":
            # The memory transport lives in one process: publish from this one.
            self.modes = ("thread",)
        port = probe.port or getattr(transport, "default_port", None)
        host = probe.hostname or "localhost"
        self._address = f"{host}:{port}" if port else host
        self._user = probe.userid
        self._delivery_mode = 2 if o.delivery_mode in ("persistent", 2) else 1
        self._conn: Connection | None = None
        self._producer: Producer | None = None
        self._batching = False
        self._healthy = False
        # py-amqp publisher confirms, awaited per batch (see _await_confirms).
        self._confirming = self._driver == "amqp" and bool(
            o.transport_options.get("confirm_publish", True)
        )
        self._confirms = PublisherConfirms()

    # ------------------------------------------------------------ connections

    def _transport_options(self, consumer: bool) -> dict[str, Any]:
        """The user's transport options over defaults that bound every call."""
        o = self.options
        defaults: dict[str, Any] = {}
        if self._driver == "amqp":
            # Bound socket reads and writes, so a stalled broker cannot hang
            # publish or close.
            defaults = {"read_timeout": o.publish_timeout, "write_timeout": o.publish_timeout}
        elif self._driver == "redis":
            defaults = {
                "socket_timeout": o.publish_timeout,
                "socket_connect_timeout": o.connect_timeout,
            }
        elif self._driver == "memory" and consumer:
            # Kombu polls virtual transports once a second by default.
            defaults = {"polling_interval": 0.05}
        options = {**defaults, **o.transport_options}
        if self._driver == "amqp":
            # Confirms are awaited per batch here, not per message by py-amqp.
            options["confirm_publish"] = False
        return options

    def _connect(self, consumer: bool = False) -> Connection:
        o = self.options
        ssl_argument = o.ssl if o.tls is None else _ssl_argument(o.tls, self._alias, o.url)
        extra: dict[str, Any] = {} if ssl_argument is None else {"ssl": ssl_argument}
        conn = Connection(
            o.url,
            connect_timeout=o.connect_timeout,
            transport_options=self._transport_options(consumer),
            **extra,
        )
        try:
            # One attempt per host (failover URLs list several), no Kombu
            # retry loop: the pipeline owns retries and their backoff.
            conn.ensure_connection(
                max_retries=max(len(conn.alt), 1) - 1,
                interval_start=0,
                reraise_as_library_errors=False,
            )
        except BaseException:
            _drop(conn)
            raise
        return conn

    def topology(self) -> Topology:
        """The exchange, and the ``queue`` bound with ``bindings``, to declare."""
        o = self.options
        return Topology(
            ExchangeSpec(o.exchange, o.exchange_type, o.durable, o.create_missing),
            o.queue,
            tuple(o.bindings),
            o.durable,
            dict(o.queue_arguments),
        )

    def _declare_queue(self, channel: Any, exchange: Exchange, queue: QueueSpec) -> Queue:
        """Declare ``queue`` on ``channel`` and bind it to ``exchange``."""
        bound = Queue(
            queue.name or f"dask-eventbus-{uuid.uuid4().hex}",
            bindings=[binding(exchange, routing_key=key) for key in queue.keys],
            durable=queue.durable,
            auto_delete=queue.temporary,
            exclusive=queue.temporary and self._driver == "amqp",
            queue_arguments=queue.arguments or None,
        )(channel)
        bound.declare()
        return bound

    # ------------------------------------------------------------ producer

    def open(self) -> None:
        self.close()
        conn = self._connect()
        try:
            channel = conn.channel()
            topology = self.topology()
            exchange = _declare_exchange(channel, topology.exchange)
            queue = topology.publisher_queue()
            if queue is not None:
                self._declare_queue(channel, exchange, queue)
            producer = Producer(channel, exchange=exchange, auto_declare=False)
            if self._confirming:
                channel.confirm_select()
                confirms = self._confirms = PublisherConfirms()
                channel.events["basic_ack"].add(confirms.settle)
                channel.events["basic_nack"].add(functools.partial(confirms.settle, refused=True))
        except BaseException:
            _drop(conn)
            raise
        self._conn, self._producer = conn, producer
        # Kombu >= 5.7 pipelines a batch on transports that can (Redis).
        self._batching = hasattr(producer, "batch") and producer.supports_batch_publish
        self._healthy = True

    def publish(self, messages: Sequence[Message]) -> None:
        producer = self._producer
        if producer is None:
            raise RuntimeError("the kombu backend is not open")
        self._healthy = False
        if self._confirming:
            # Before publishing: py-amqp may read confirms while it writes.
            self._confirms.expect(len(messages))
        if self._batching:
            with producer.batch(max_size=max(1000, 2 * len(messages))):
                self._publish_each(producer, messages)
        else:
            self._publish_each(producer, messages)
        if self._confirming:
            self._await_confirms(len(messages))
        self._healthy = True

    def _await_confirms(self, count: int) -> None:
        """Wait until the broker confirmed the ``count`` messages just published.

        A nack of any of them, a timeout or a lost connection raises, and the
        pipeline publishes the whole batch again.
        """
        timeout = self.options.publish_timeout
        deadline = time.monotonic() + timeout
        assert self._conn is not None
        confirms = self._confirms
        while confirms.unsettled:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(
                    f"the broker confirmed {count - confirms.unsettled} of {count} "
                    f"messages within publish-timeout ({timeout:g}s)"
                )
            with contextlib.suppress(socket.timeout):
                self._conn.drain_events(timeout=remaining)
        if confirms.nacked:
            nacked, confirms.nacked = confirms.nacked, 0
            raise MessageNacked(f"the broker nacked {nacked} of {count} messages")

    def _publish_each(self, producer: Producer, messages: Sequence[Message]) -> None:
        o = self.options
        routing_key = routing_key_function(o.routing_key)
        timeout = o.publish_timeout
        publish = producer.publish
        mode = self._delivery_mode
        for m in messages:
            publish(
                m.body,
                routing_key=routing_key(m),
                content_encoding=CONTENT_ENCODING,
                delivery_mode=mode,
                retry=False,
                timeout=timeout,
                confirm_timeout=timeout,
                **properties_of(m),
            )

    def close(self) -> None:
        conn, self._conn, self._producer = self._conn, None, None
        if conn is None:
            return
        if self._healthy:
            try:
                conn.release()
                return
            except Exception:
                pass
        # After a failure the connection is in doubt: drop it without the
        # closing handshake a dead or stalled broker would never answer.
        _drop(conn)

    # ------------------------------------------------------------ consumer

    def open_subscription(self, options: AmqpSubscribeOptions) -> Subscription:
        """Consume from a queue bound to the exchange, acknowledging after yield.

        Without a ``queue`` (here or in the options) a new exclusive,
        auto-deleted queue receives the events published from now on. A named
        queue is declared (durable) and bound, and holds what was published
        while no one consumed it: ``from_beginning`` needs one.
        """
        name = options.queue or self.options.queue
        bindings = options.bindings
        keys = [bindings] if isinstance(bindings, str) else list(bindings or self.options.bindings)
        self.topology().check_subscription(
            keys, name, options.from_beginning, "eventbus.backends.kombu"
        )
        from .kombu_reader import KombuSubscription

        subscription = KombuSubscription(self, name, keys, options.prefetch)
        subscription.start()
        return subscription

    def _consume(
        self, name: str | None, keys: Sequence[str], prefetch: int, on_message: Any
    ) -> tuple[Connection, Queue, Consumer]:
        """A new connection consuming the queue ``name`` (or a new exclusive one)."""
        conn = self._connect(consumer=True)
        try:
            channel = conn.channel()
            topology = self.topology()
            exchange = _declare_exchange(channel, topology.exchange)
            bound = self._declare_queue(channel, exchange, topology.subscriber_queue(keys, name))
            consumer = Consumer(
                channel,
                [bound],
                no_ack=False,
                auto_declare=False,
                on_message=on_message,
                accept=[CONTENT_TYPE, BATCH_CONTENT_TYPE],
            )
            consumer.qos(prefetch_count=prefetch)
            consumer.consume()
            return conn, bound, consumer
        except BaseException:
            _drop(conn)
            raise

    # ------------------------------------------------------------ for people

    def describe(self) -> str:
        o = self.options
        where = f"kombu {self.mask(o.url)} exchange {o.exchange!r} ({o.exchange_type})"
        if o.queue is not None:
            where += f", queue {o.queue!r}"
        return where

    def broker(self) -> str:
        return f"{self._alias}://{self._address}"

    def classify(self, exc: BaseException) -> Problem | None:
        from .diagnosis import Problem, network_problem  # here: only an error needs it

        exc = _root_cause(exc)
        o = self.options
        names = {cls.__name__ for cls in type(exc).__mro__}
        module = type(exc).__module__ or ""
        text = str(exc)
        if module.startswith("redis"):
            if "AuthenticationError" in names or "AuthenticationWrongNumberOfArgsError" in names:
                fix = "check the user name and password in eventbus.backends.kombu.url"
                return Problem("authentication", text, fix=fix)
            if "TimeoutError" in names:
                return Problem("timeout", text)
            if "ConnectionError" in names:
                return Problem("connect", text)
            return Problem("refused", f"{type(exc).__name__}: {text}", "a command")
        code = getattr(exc, "reply_code", None)
        if module.startswith("amqp") and code is not None:
            reply = getattr(exc, "reply_text", "") or text
            if code == 403:
                fix = (
                    "check the user name, password and virtual host in eventbus.backends.kombu.url"
                )
                return Problem("authentication", reply, f"user {self._user!r}", fix)
            if code == 406:
                what = f"exchange {o.exchange!r}"
                if o.queue is not None:
                    what += f" or queue {o.queue!r}"
                fix = (
                    "it exists with other settings; make exchange-type, durable and "
                    "queue-arguments match it, or delete it"
                )
                return Problem("refused", reply, f"to declare {what}", fix)
            if code == 530:
                fix = (
                    "check the virtual host in eventbus.backends.kombu.url and the "
                    "user's permissions"
                )
                return Problem("permission", reply, f"user {self._user!r}", fix)
            if code == 404:
                return not_found(reply)
            if code in (320, 541):
                return Problem("lost", f"the broker closed it: {reply}")
            return Problem("refused", f"AMQP error {code}: {reply}")
        if "MessageNacked" in names:
            return Problem("refused", text, "a published message (nacked)")
        if isinstance(exc, ImportError):
            extra = _TRANSPORT_EXTRAS.get(self._alias, self._alias)
            return Problem(
                "said",
                f"the Kombu {self._alias!r} transport needs a library that is not "
                f"installed ({text}): pip install 'kombu[{extra}]'",
            )
        # Under Kombu's wrappers, where the framework does not look.
        return network_problem(exc)


def _check_tls(tls: TLSOptions, alias: str) -> None:
    if alias in ("amqp", "amqps", "pyamqp"):
        tls.refuse("py-amqp (Kombu's amqp transport)", "key-password")
    elif alias in ("redis", "rediss"):
        tls.refuse("redis-py (Kombu's redis transport)", "server-hostname")
    elif tls != TLSOptions():
        raise ValueError(
            f"tls settings are mapped for Kombu's amqp and redis transports only; for "
            f"{alias}:// give an empty tls block (TLS on) and its own transport-options"
        )


def _ssl_argument(tls: TLSOptions, alias: str, url: str) -> bool | dict[str, Any]:
    """Kombu's ``ssl`` argument for the transport: py-amqp's or redis-py's names."""
    if alias in ("redis", "rediss"):
        return tls.redis_py()
    if alias in ("amqp", "amqps", "pyamqp"):
        # py-amqp checks the host name only when given one to check.
        host = tls.server_hostname or urlsplit(url.split(";", 1)[0]).hostname
        return {
            "ca_certs": tls.ca_file,
            "certfile": tls.cert_file,
            "keyfile": tls.key_file,
            "cert_reqs": ssl.CERT_REQUIRED if tls.verify else ssl.CERT_NONE,
            "server_hostname": host if tls.verify else tls.server_hostname,
        }
    return True


def _declare_exchange(channel: Any, exchange: ExchangeSpec) -> Exchange:
    """Declare ``exchange`` on ``channel`` (unless it is managed elsewhere);
    the Kombu exchange, bound to it."""
    bound = Exchange(
        exchange.name, type=exchange.type, durable=exchange.durable, auto_delete=False
    )(channel)
    if exchange.declared:
        bound.declare()
    return bound


def _root_cause(exc: BaseException) -> BaseException:
    """The client library's own error under Kombu's wrappers."""
    seen = 0
    while seen < 5 and isinstance(exc, KombuError) and exc.__cause__:
        exc = exc.__cause__
        seen += 1
    return exc


def _drop(conn: Connection) -> None:
    """Close ``conn`` without waiting for the broker; never raises."""
    with contextlib.suppress(Exception):
        conn.collect()
    with contextlib.suppress(Exception):
        conn.release()
