"""``kafka``: events as records of one Kafka topic, through confluent-kafka.

Every event is one record whose value is the structured-mode CloudEvent, keyed
by its subject (the task key, worker address, ...) so that all events of one
task land on one partition, in order, with the header
``content-type: application/cloudevents+json`` that the CloudEvents Kafka
protocol binding asks of structured mode. ``headers: attributes`` repeats the
CloudEvents attributes as ``ce_*`` headers too, for tools that route on
headers without parsing the value.

``publish`` produces the whole batch, waits for the broker to acknowledge
every record (idempotent producer, ``acks=all`` by default) and raises if any
record failed or the wait exceeded the delivery timeout. On the retry of a
batch that failed part-way, only the records the broker did not acknowledge
are sent again. ``open`` always builds a fresh producer: after a fatal
idempotence error (or a broker that lost the producer's state) the old one
can never deliver again.

``subscribe`` assigns every partition of the topic explicitly instead of
joining a consumer-group rebalance (see :meth:`KafkaBackend.open_subscription`);
the subscription that reads them is in :mod:`.kafka_reader`.
"""

from __future__ import annotations

import contextlib
import logging
import time
import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING, Annotated, Any

import msgspec
from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Producer,
    TopicPartition,
)

from ..bindings.kafka import Header, HeaderMode, KeyMode, headers_of, key_function
from ..config import (
    ConfigError,
    PositiveDuration,
    redact_url,
)
from .clientlog import ClientLog
from .contract import Backend, Message, NetworkOptions, SubscribeOptions
from .tls import TLSOptions

if TYPE_CHECKING:
    from .diagnosis import Problem
    from .subscription import Subscription

# Under distributed's logger, so that a scheduler's logging config covers it.
logger = logging.getLogger("distributed.eventbus.kafka")

BOOTSTRAP = ("bootstrap.servers", "metadata.broker.list")
DEFAULT_BOOTSTRAP = "localhost:9092"

# What the producer gets unless ``config`` says otherwise. Each entry names
# the librdkafka aliases of one property: a user setting under any of them
# replaces the default.
PRODUCER_DEFAULTS: list[tuple[tuple[str, ...], Any]] = [
    (BOOTSTRAP, DEFAULT_BOOTSTRAP),
    (("enable.idempotence",), True),
    (("acks", "request.required.acks"), "all"),
    (("linger.ms", "queue.buffering.max.ms"), 5),
    # Only failed records get a delivery report: success is "flush emptied
    # the queue and no report came", which saves a Python callback per record.
    (("delivery.report.only.error",), True),
    # librdkafka spaces new connections by half of this (50 ms by default),
    # and every open waits for one: the broker learned from the first
    # metadata (see KafkaBackend.open). Reconnects after an outage still back
    # off exponentially, from 20 ms, up to reconnect.backoff.max.ms.
    (("reconnect.backoff.ms",), 20),
]

# Settings that only a producer understands; left out of the consumer's
# configuration so librdkafka does not warn about each of them.
PRODUCER_ONLY = frozenset(
    {
        "acks",
        "request.required.acks",
        "enable.idempotence",
        "enable.gapless.guarantee",
        "linger.ms",
        "queue.buffering.max.ms",
        "queue.buffering.max.messages",
        "queue.buffering.max.kbytes",
        "queue.buffering.backpressure.threshold",
        "batch.num.messages",
        "batch.size",
        "compression.type",
        "compression.codec",
        "compression.level",
        "message.timeout.ms",
        "delivery.timeout.ms",
        "request.timeout.ms",
        "retries",
        "message.send.max.retries",
        "delivery.report.only.error",
        "sticky.partitioning.linger.ms",
        "partitioner",
        "queuing.strategy",
        "produce.offset.report",
        "transaction.timeout.ms",
    }
)

# Consumer settings an admin client (which is a producer) would warn about.
CONSUMER_ONLY_PREFIXES = (
    "enable.auto.",
    "auto.",
    "fetch.",
    "isolation.",
    "session.",
    "heartbeat.",
    "partition.assignment.",
    "max.poll.",
    "group.",
    "check.crcs",
    "enable.partition.eof",
)

# Callbacks the backend owns: it relies on seeing every failed delivery.
RESERVED = frozenset({"on_delivery", "dr_cb", "dr_msg_cb", "delivery.report.callback"})

# Records a subscription takes from the client per fetch.
FETCH_MAX = 500

# Margin over message.timeout.ms before a stalled flush is abandoned:
# librdkafka scans for timed-out messages about once a second.
FLUSH_GRACE = 2.0

_NOT_FOUND = {KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError._UNKNOWN_TOPIC}
_UNREACHABLE = {
    KafkaError._TRANSPORT,
    KafkaError._ALL_BROKERS_DOWN,
    KafkaError._RESOLVE,
    KafkaError._TIMED_OUT,
    KafkaError._MSG_TIMED_OUT,
    KafkaError._TIMED_OUT_QUEUE,
    KafkaError.REQUEST_TIMED_OUT,
    KafkaError.NETWORK_EXCEPTION,
    KafkaError.LEADER_NOT_AVAILABLE,
    KafkaError.NOT_LEADER_FOR_PARTITION,
    KafkaError._PURGE_QUEUE,
    KafkaError._PURGE_INFLIGHT,
}
_AUTHENTICATION = {KafkaError._AUTHENTICATION, KafkaError.SASL_AUTHENTICATION_FAILED}
_AUTHORIZATION = {
    KafkaError.TOPIC_AUTHORIZATION_FAILED,
    KafkaError.CLUSTER_AUTHORIZATION_FAILED,
    KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED,
    KafkaError.GROUP_AUTHORIZATION_FAILED,
}
_TOO_LARGE = {KafkaError.MSG_SIZE_TOO_LARGE}

TopicName = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9._-]{1,249}$")]


class KafkaOptions(NetworkOptions):
    aliases = {
        "timeout": ("connect-timeout", "publish-timeout"),
        "create-topic": ("create-missing",),
    }

    topic: TopicName = "dask-events"
    """The topic every event is produced to."""
    config: dict[str, Any] = msgspec.field(default_factory=dict)
    """librdkafka settings (``bootstrap.servers``, ``security.protocol``,
    ``sasl.*``, ``ssl.*``, ``compression.type``, ...), over the defaults."""
    key: KeyMode = "subject"
    """What becomes the record key, and so decides the partition."""
    headers: HeaderMode = "content-type"
    """Record headers: ``content-type`` only (structured mode, as the binding
    asks), plus the ``ce_*`` attributes, or none at all."""
    create_missing: bool = True
    """Create the topic when it is missing (alias: ``create-topic``)."""
    partitions: Annotated[int, msgspec.Meta(ge=1)] | None = None
    """Partitions of a topic this backend creates; ``None``: the broker's default."""
    replication_factor: Annotated[int, msgspec.Meta(ge=1)] | None = None
    """Replicas of a topic this backend creates; ``None``: the broker's default."""
    tls: TLSOptions | None = None
    """TLS to the brokers (``security.protocol`` SSL, or SASL_SSL with SASL),
    mapped to librdkafka's ``ssl.*`` settings."""
    connect_timeout: PositiveDuration = PositiveDuration(30.0)
    """Longest wait for metadata, topic creation and a consumer's offsets."""
    publish_timeout: PositiveDuration = PositiveDuration(30.0)
    """Longest wait for the delivery of each record (``message.timeout.ms``
    unless ``config`` sets it). Alias of both: ``timeout``."""

    def __post_init__(self) -> None:
        if self.topic in (".", ".."):
            raise ValueError(f"topic must not be {self.topic!r}")
        for name in self.config:
            if not isinstance(name, str):
                raise ValueError(f"config keys must be librdkafka property names, got {name!r}")
        reserved = sorted(RESERVED.intersection(self.config))
        if reserved:
            raise ValueError(
                f"config must not set {', '.join(reserved)}: the kafka backend handles "
                "delivery reports itself"
            )
        if "transactional.id" in self.config:
            raise ValueError(
                "config must not set transactional.id: the kafka backend uses an "
                "idempotent producer, not transactions"
            )
        if self.tls is not None:
            self.tls.refuse("librdkafka", "server-hostname")
            given = sorted(name for name in self.config if name.startswith("ssl."))
            if given:
                raise ValueError(
                    f"give TLS settings in the tls block or as config {', '.join(given)}, not both"
                )
        names = ("message.timeout.ms", "delivery.timeout.ms")
        if float(_setting(producer_config(self), names)) <= 0:
            raise ValueError(
                "config: message.timeout.ms must be greater than 0 (0 retries a record "
                "forever, and every publish must be bounded)"
            )


class KafkaSubscribeOptions(SubscribeOptions):
    group: Annotated[str, msgspec.Meta(min_length=1)] | None = None
    """A consumer group, whose committed offsets say where to resume."""


def _tls_config(tls: TLSOptions, protocol: str) -> dict[str, Any]:
    """librdkafka's settings for the tls block (SASL, if configured, stays on)."""
    config: dict[str, Any] = {
        "security.protocol": "SASL_SSL" if protocol.upper().startswith("SASL") else "SSL",
        "enable.ssl.certificate.verification": tls.verify,
        "ssl.endpoint.identification.algorithm": "https" if tls.verify else "none",
    }
    for name, value in (
        ("ssl.ca.location", tls.ca_file),
        ("ssl.certificate.location", tls.cert_file),
        ("ssl.key.location", tls.key_file),
        ("ssl.key.password", tls.key_password),
    ):
        if value is not None:
            config[name] = value
    return config


def _has_any(config: dict[str, Any], names: Sequence[str]) -> bool:
    return any(name in config for name in names)


def _setting(config: dict[str, Any], names: Sequence[str], default: Any = None) -> Any:
    for name in names:
        if name in config:
            return config[name]
    return default


def producer_config(options: KafkaOptions) -> dict[str, Any]:
    """The producer's librdkafka settings: defaults, then the user's ``config``."""
    user = options.config
    config: dict[str, Any] = {
        names[0]: value for names, value in PRODUCER_DEFAULTS if not _has_any(user, names)
    }
    if not _has_any(user, ("message.timeout.ms", "delivery.timeout.ms")):
        config["message.timeout.ms"] = max(1, round(options.publish_timeout * 1000))
    if options.create_missing and "allow.auto.create.topics" not in user:
        # The backend creates the topic with the configured partitions; a
        # producer refreshing metadata must not create it first with the
        # broker's defaults (e.g. after a broker lost its topics).
        config["allow.auto.create.topics"] = False
    config.update(user)
    return config


def _check_librdkafka_config(options: KafkaOptions) -> None:
    """Let librdkafka refuse unknown properties and bad values up front.

    A producer is created without brokers (so nothing connects) and without
    the security settings (certificate files and Kerberos may exist only
    where the scheduler runs; they are checked when it opens), then dropped.
    Not part of parsing the options: a producer starts librdkafka's threads,
    and restoring a pickled backend in the publisher process must not.
    """
    config = {
        name: value
        for name, value in producer_config(options).items()
        if not name.startswith(("ssl.", "sasl.", "security.", "ssl_", "oauth"))
        and name not in BOOTSTRAP
    }
    config["log_level"] = 0
    try:
        Producer(config)
    except KafkaException as exc:
        problem = _error_text(exc)
    except (TypeError, ValueError) as exc:
        problem = str(exc)
    else:
        return
    raise ConfigError(
        f"Invalid event bus config eventbus.backends.kafka.config: {options.mask(problem)}"
    )


def _error_of(exc: BaseException) -> KafkaError | None:
    if isinstance(exc, KafkaException) and exc.args and isinstance(exc.args[0], KafkaError):
        return exc.args[0]
    if isinstance(exc, KafkaPublishError):
        return exc.error
    return None


def _error_text(exc: BaseException) -> str:
    error = _error_of(exc)
    return error.str() if error is not None else str(exc)


class KafkaPublishError(Exception):
    """Records of a batch were not acknowledged; the rest of it is owed."""

    def __init__(
        self,
        message: str,
        *,
        error: KafkaError | None,
        cause: KafkaError | None,
        owed: int,
        attempted: int,
        buffer_full: bool = False,
    ) -> None:
        super().__init__(message)
        self.error = error
        """The error the first failed record (or the whole attempt) failed with."""
        self.cause = cause
        """The client's last connection-level error: why records time out."""
        self.owed = owed
        self.attempted = attempted
        self.buffer_full = buffer_full


def _configuration_trouble(level: int, args: tuple[Any, ...]) -> bool:
    """Whether a librdkafka log line is a configuration warning or a fatal
    error, which stay visible; the facility is its first argument."""
    return bool(args) and str(args[0]) in ("CONFWARN", "FATAL")


class KafkaBackend(Backend):
    """Produces events to one Kafka topic with an idempotent producer."""

    name = "kafka"
    Options = KafkaOptions
    SubscribeOptions = KafkaSubscribeOptions
    options: KafkaOptions

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self._producer: Producer | None = None
        self._failures: list[tuple[KafkaError, bytes | None]] = []
        self._produced = 0
        self._last_client_error: KafkaError | None = None
        self._fatal: KafkaError | None = None
        # A batch that failed part-way: (its identity, the records still owed).
        self._owed: tuple[tuple[int, str, str], list[Message]] | None = None
        self._key_of = key_function(self.options.key)
        config = producer_config(self.options)
        self.delivery_timeout: float = (
            float(_setting(config, ("message.timeout.ms", "delivery.timeout.ms"))) / 1000
        )
        """Seconds librdkafka tries to deliver one record before failing it."""

    def check(self) -> None:
        _check_librdkafka_config(self.options)

    # ------------------------------------------------------------ settings

    @property
    def bootstrap_servers(self) -> str:
        """The brokers first contacted, as configured (no credentials in it)."""
        return redact_url(str(_setting(self.options.config, BOOTSTRAP, DEFAULT_BOOTSTRAP)))

    def _client_config(self, base: dict[str, Any], **extra: Any) -> dict[str, Any]:
        """``base`` plus what every client of this backend shares.

        Errors are remembered for :meth:`explain`, and logs go to the
        ``distributed.eventbus.kafka`` logger (unless ``config`` brings a logger).
        """
        config = dict(base)
        if self.options.tls is not None:
            config.update(_tls_config(self.options.tls, config.get("security.protocol", "")))
        if not _has_any(config, BOOTSTRAP):
            config["bootstrap.servers"] = DEFAULT_BOOTSTRAP
        config.setdefault(
            "logger", ClientLog(logger, "librdkafka", self.mask, _configuration_trouble)
        )
        config.update(extra)
        user_error_cb = self.options.config.get("error_cb")

        def on_error(error: KafkaError) -> None:
            self._last_client_error = error
            if error.fatal():
                self._fatal = error
            logger.debug("Kafka client error: %s", self.mask(error.str()))
            if callable(user_error_cb):
                user_error_cb(error)

        config["error_cb"] = on_error
        return config

    # ------------------------------------------------------------ producer

    def open(self) -> None:
        self.close()
        self._fatal = None
        self._last_client_error = None
        # Always a new producer: after a fatal idempotence error, or a broker
        # that lost the producer's state, the old one never delivers again.
        config = self._client_config(producer_config(self.options), on_delivery=self._on_delivery)
        producer = Producer(config)
        try:
            self._ensure_topic(producer)
            # The first answer came through the bootstrap connection, which
            # librdkafka then drops to connect the brokers it learned. An
            # idempotent producer that asks for its producer id meanwhile
            # finds no broker up and asks again on a 500 ms timer, which the
            # first publish (and a scheduler's close) would wait out. A second
            # metadata request returns once a learned broker is up.
            producer.list_topics(self.options.topic, timeout=self.options.connect_timeout)
        except BaseException:
            self._serve_callbacks(producer)
            _discard_producer(producer)
            raise
        self._producer = producer

    def _on_delivery(self, error: KafkaError | None, message: Any) -> None:
        if error is not None:
            self._failures.append((error, message.value()))

    def _ensure_topic(self, client: Producer | Consumer) -> list[int]:
        """The topic's partitions; creates the topic when missing and allowed."""
        options = self.options
        topic = options.topic
        deadline = time.monotonic() + options.connect_timeout
        created = False
        while True:
            metadata = client.list_topics(topic, timeout=max(0.1, deadline - time.monotonic()))
            found = metadata.topics.get(topic)
            error = found.error if found is not None else None
            if found is not None and error is None and found.partitions:
                return sorted(found.partitions)
            code = error.code() if error is not None else KafkaError.UNKNOWN_TOPIC_OR_PART
            if code not in _NOT_FOUND and code != KafkaError.LEADER_NOT_AVAILABLE:
                raise KafkaException(error)
            if code in _NOT_FOUND and not created:
                if not options.create_missing:
                    raise KafkaException(
                        KafkaError(KafkaError.UNKNOWN_TOPIC_OR_PART, f"topic {topic!r} not found")
                    )
                self._create_topic()
                created = True
            elif time.monotonic() >= deadline:
                # Created, but its metadata has not reached this broker yet.
                raise KafkaException(error or KafkaError(KafkaError.UNKNOWN_TOPIC_OR_PART))
            else:
                time.sleep(0.1)

    def _create_topic(self) -> None:
        # Here, not at the top: a publisher process whose topic exists need
        # not load the admin client (4% of its start).
        from confluent_kafka.admin import AdminClient, NewTopic

        options = self.options
        base = {
            name: value
            for name, value in options.config.items()
            if name not in PRODUCER_ONLY
            and not name.startswith(CONSUMER_ONLY_PREFIXES)
            and name not in ("group.id", "group.instance.id", "error_cb")
        }
        admin = AdminClient(self._client_config(base))
        new = NewTopic(
            options.topic,
            options.partitions if options.partitions is not None else -1,
            options.replication_factor if options.replication_factor is not None else -1,
        )
        futures = admin.create_topics(
            [new],
            request_timeout=options.connect_timeout,
            operation_timeout=options.connect_timeout,
        )
        try:
            futures[options.topic].result(timeout=options.connect_timeout + 1.0)
        except KafkaException as exc:
            error = _error_of(exc)
            if error is None or error.code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise
        except TimeoutError:
            self._serve_callbacks(admin)
            raise KafkaException(
                KafkaError(KafkaError._TIMED_OUT, "creating the topic timed out")
            ) from None
        else:
            logger.info(
                "Created Kafka topic %r at %s (partitions: %s, replication factor: %s)",
                options.topic,
                self.bootstrap_servers,
                options.partitions or "broker default",
                options.replication_factor or "broker default",
            )

    def _serve_callbacks(self, client: Any) -> None:
        # Errors and logs reach their callbacks only when the client is polled.
        with contextlib.suppress(Exception):
            client.poll(0)

    def publish(self, messages: Sequence[Message]) -> None:
        producer = self._producer
        if producer is None:
            raise RuntimeError("kafka backend is not open")
        if not messages:
            return
        identity = (len(messages), messages[0].id, messages[-1].id)
        owed = self._owed
        batch = owed[1] if owed is not None and owed[0] == identity else list(messages)
        self._owed = None
        self._failures = []
        problem: BaseException | None = None
        try:
            self._produce(producer, batch)
            self._wait_for_acks(producer)
        except Exception as exc:
            problem = exc
        else:
            if not self._failures:
                return
        produced = self._produced
        still_owed = self._settle(producer, batch[:produced]) + batch[produced:]
        if not still_owed:
            # Everything was acknowledged before the error struck; a broken
            # producer shows on the next publish, and the pipeline reopens.
            return
        self._owed = (identity, still_owed)
        raise self._failure(len(still_owed), len(batch), problem) from problem

    def record_of(self, message: Message) -> tuple[str | None, list[Header] | None]:
        """The key and headers of the record ``message`` becomes."""
        return self._key_of(message), headers_of(message, self.options.headers)

    def _produce(self, producer: Producer, batch: Sequence[Message]) -> None:
        topic = self.options.topic
        record_of = self.record_of
        produce = producer.produce
        give_up = time.monotonic() + self.delivery_timeout
        produced = 0
        try:
            for message in batch:
                key, headers = record_of(message)
                timestamp = int(message.time * 1000)
                while True:
                    try:
                        produce(topic, message.body, key, timestamp=timestamp, headers=headers)
                        break
                    except BufferError:
                        # The local queue is full: back-pressure. Let librdkafka
                        # deliver some, then try this record again.
                        if time.monotonic() >= give_up:
                            raise
                        producer.poll(0.05)
                        if self._fatal is not None:
                            raise KafkaException(self._fatal) from None
                produced += 1
        finally:
            self._produced = produced

    def _wait_for_acks(self, producer: Producer) -> None:
        limit = self.delivery_timeout + FLUSH_GRACE
        deadline = time.monotonic() + limit
        while True:
            remaining = producer.flush(min(0.5, max(0.0, deadline - time.monotonic())))
            if remaining == 0:
                return
            if self._fatal is not None:
                raise KafkaException(self._fatal)
            if time.monotonic() >= deadline:
                raise KafkaException(
                    KafkaError(
                        KafkaError._MSG_TIMED_OUT,
                        f"{remaining} records were not acknowledged within {limit:.0f}s",
                    )
                )

    def _settle(self, producer: Producer, produced: list[Message]) -> list[Message]:
        """The ``produced`` records that the broker did not acknowledge.

        Whatever is still queued is purged, which reports it as failed; when
        every record is then accounted for, only the failed ones are owed.
        Otherwise all are, as nobody can tell which arrived.
        """
        if not produced:
            return []
        with contextlib.suppress(Exception):
            producer.purge()
        self._serve_callbacks(producer)
        try:
            unaccounted = len(producer)
        except Exception:
            unaccounted = 1
        if unaccounted:
            return produced
        failed = {body for _, body in self._failures}
        return [message for message in produced if message.body in failed]

    def _failure(
        self, owed: int, attempted: int, problem: BaseException | None
    ) -> KafkaPublishError:
        error = self._failures[0][0] if self._failures else None
        if problem is not None and _error_of(problem) is not None:
            error = _error_of(problem)
        if isinstance(problem, BufferError):
            reason = "the local producer queue stayed full"
        elif error is not None:
            reason = error.str()
        else:
            reason = f"{type(problem).__name__}: {problem}"
        return KafkaPublishError(
            self.mask(f"{owed} of {attempted} records not acknowledged by Kafka: {reason}"),
            error=error,
            cause=self._last_client_error,
            owed=owed,
            attempted=attempted,
            buffer_full=isinstance(problem, BufferError),
        )

    def close(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            _discard_producer(producer)

    def abort(self) -> None:
        # librdkafka's purge is thread-safe: the waiting publish sees every
        # record it still holds fail, and raises.
        producer = self._producer
        if producer is not None:
            with contextlib.suppress(Exception):
                producer.purge()

    # ------------------------------------------------------------ consumer

    def open_subscription(self, options: KafkaSubscribeOptions) -> Subscription:
        """Read the topic's events: new ones, or all that the topic still holds.

        ``group``: a consumer group name. Its committed offsets say where to
        resume, and each event's offset is committed once the next event is
        asked for (or the subscription closes). Without it a unique group id
        is used and nothing is committed.

        Every partition of the topic is assigned to this consumer explicitly,
        from offsets resolved before ``subscribe`` returns, instead of joining
        a group rebalance: a rebalance takes seconds (3 s of
        ``group.initial.rebalance.delay.ms`` on Kafka, half the session
        timeout on Tansu) before the first event arrives, and spreading one
        topic over several consumers is what a plain confluent-kafka consumer
        with ``subscribe()`` is for. Two subscriptions with the same group
        therefore both receive everything.
        """
        group, from_beginning = options.group, options.from_beginning
        base = {
            name: value
            for name, value in self.options.config.items()
            if name not in PRODUCER_ONLY and name != "error_cb"
        }
        config = self._client_config(
            base,
            **{
                "group.id": group or f"dask-eventbus-{uuid.uuid4().hex}",
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                # An offset that no longer exists (retention, a recreated
                # topic) is replaced by the oldest one: nothing is skipped.
                "auto.offset.reset": "earliest",
                "enable.partition.eof": False,
            },
        )
        if "session.timeout.ms" not in self.options.config:
            # Partitions are assigned, not balanced, so the session timeout
            # only bounds how long a commit waits for an absent coordinator:
            # closing the subscription while the broker is down.
            config["session.timeout.ms"] = max(
                1000, round(min(self.options.connect_timeout, 10.0) * 1000)
            )
        consumer = Consumer(config)
        try:
            partitions = self._ensure_topic(consumer)
            consumer.assign(self._start_offsets(consumer, partitions, group, from_beginning))
        except BaseException:
            with contextlib.suppress(Exception):
                consumer.close()
            raise
        from .kafka_reader import KafkaSubscription

        return KafkaSubscription(consumer, self.options.topic, commit=group is not None)

    def _start_offsets(
        self, consumer: Consumer, partitions: list[int], group: str | None, from_beginning: bool
    ) -> list[TopicPartition]:
        topic, timeout = self.options.topic, self.options.connect_timeout
        wanted = [TopicPartition(topic, p) for p in partitions]
        committed = {}
        if group is not None:
            for tp in consumer.committed(wanted, timeout=timeout):
                if tp.error is None and tp.offset >= 0:
                    committed[tp.partition] = tp.offset
        assignment = []
        for tp in wanted:
            if tp.partition in committed:
                offset = committed[tp.partition]
            elif from_beginning:
                offset = OFFSET_BEGINNING
            else:
                # Resolved now rather than when fetching starts, so that
                # events published right after subscribe() returns are read.
                _, offset = consumer.get_watermark_offsets(tp, timeout=timeout, cached=False)
            assignment.append(TopicPartition(topic, tp.partition, offset))
        return assignment

    # ------------------------------------------------------------ for people

    def describe(self) -> str:
        return f"Kafka topic {self.options.topic!r} at {self.bootstrap_servers}"

    def broker(self) -> str:
        return f"Kafka at {self.bootstrap_servers}"

    def explain(self, exc: BaseException) -> str:
        if not isinstance(exc, KafkaPublishError):
            return super().explain(exc)
        unacknowledged = f" ({exc.owed} of {exc.attempted} records of the batch unacknowledged)"
        return super().explain(exc) + unacknowledged

    def classify(self, exc: BaseException) -> Problem | None:
        from .diagnosis import Problem  # here: only an error needs it

        options = self.options
        topic = f"topic {options.topic!r}"
        if isinstance(exc, BufferError) or (isinstance(exc, KafkaPublishError) and exc.buffer_full):
            return Problem(
                "said",
                f"the local Kafka producer queue stayed full for {self.delivery_timeout:.0f}s "
                f"while publishing to {self.bootstrap_servers}: the broker is too slow or "
                "unreachable",
            )
        error = _error_of(exc)
        if error is None:
            return None
        code = error.code()
        cause = exc.cause if isinstance(exc, KafkaPublishError) else self._last_client_error
        # A record that timed out says nothing about why; the client's last
        # connection-level error usually does.
        if code in _UNREACHABLE and cause is not None and cause.code() not in _UNREACHABLE:
            error, code = cause, cause.code()
        if code in _AUTHENTICATION:
            user = _setting(options.config, ("sasl.username",))
            fix = (
                "check sasl.mechanism, sasl.username and sasl.password in "
                "eventbus.backends.kafka.config"
            )
            return Problem("authentication", error.str(), f"user {user!r}" if user else "", fix)
        if code == KafkaError._SSL:
            fix = "check security.protocol and the tls block or the ssl.* settings"
            return Problem("tls", error.str(), fix=fix)
        if code in _AUTHORIZATION:
            fix = "grant WRITE and DESCRIBE on the topic"
            if code == KafkaError.CLUSTER_AUTHORIZATION_FAILED:
                fix += (
                    " (an idempotent producer on an old broker also needs IDEMPOTENT_WRITE "
                    "on the cluster; or set enable.idempotence: false)"
                )
            return Problem("permission", error.str(), topic, fix)
        if code in _NOT_FOUND:
            return Problem("missing", about=topic)
        if code in _TOO_LARGE:
            fix = (
                "raise message.max.bytes (producer) and max.message.bytes (topic), or lower "
                "eventbus.events.max-event-bytes below them"
            )
            return Problem("too-large", error.str(), fix=fix)
        if code == KafkaError._INVALID_ARG:
            return Problem(
                "said", f"invalid setting in eventbus.backends.kafka.config: {error.str()}"
            )
        if code in _UNREACHABLE:
            detail = error.str()
            if cause is not None and cause is not error:
                detail += f"; last connection error: {cause.str()}"
            fix = "is it running there, and bootstrap.servers right?"
            return Problem("connect", detail, fix=fix)
        if error.fatal():
            return Problem(
                "said",
                f"the Kafka producer failed fatally: {error.str()}. A new producer is made "
                "for the retry",
            )
        return Problem("refused", f"{error.name()}: {error.str()}", f"a request on {topic}")


def _discard_producer(producer: Producer) -> None:
    """Drop a producer without waiting for anything it still holds."""
    with contextlib.suppress(Exception):
        producer.purge()
    with contextlib.suppress(Exception):
        producer.poll(0)
    close = getattr(producer, "close", None)
    if close is not None:
        with contextlib.suppress(Exception):
            close()
