"""AMQP 0-9-1 (RabbitMQ with pika, Kombu): routing key and properties of
messages, and the exchange and queues the backends declare."""

from __future__ import annotations

import re
import string
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Annotated, Any

import msgspec

from ..backends.contract import Message, SubscribeOptions
from ..events import CONTENT_TYPE, TASK_TRANSITION

if TYPE_CHECKING:
    from ..backends.diagnosis import Problem

APP_ID = "dask-eventbus"
KEY_FIELDS = ("routing_key", "type", "subject", "start", "finish")
MAX_ROUTING_KEY_BYTES = 255  # an AMQP short string
_TRANSITION_PREFIX = TASK_TRANSITION + "."


def check_routing_key(template: str) -> None:
    """Raise ValueError naming the problem if ``template`` is no routing-key template."""
    try:
        names = [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]
    except ValueError as exc:
        raise ValueError(f"routing-key {template!r} is not a valid template: {exc}") from None
    unknown = sorted(set(names) - set(KEY_FIELDS))
    if unknown:
        allowed = ", ".join("{" + f + "}" for f in KEY_FIELDS)
        raise ValueError(
            f"routing-key {template!r} uses unknown placeholders {unknown}; allowed: {allowed}"
        )


def routing_key_function(template: str | None) -> Callable[[Message], str]:
    """The routing key of each message: its own (the event type, plus
    ``.<start>.<finish>`` for transitions), or ``template`` filled in.

    A batch of events keeps its own key, ``dask.eventbus.batch``: one
    subject or transition does not describe it.
    """
    if template is None or template == "{routing_key}":
        return lambda message: message.routing_key

    def render(message: Message) -> str:
        if message.content_type != CONTENT_TYPE:
            return message.routing_key
        start = finish = ""
        if message.routing_key.startswith(_TRANSITION_PREFIX):
            start, _, finish = message.routing_key[len(_TRANSITION_PREFIX) :].partition(".")
        key = template.format(
            routing_key=message.routing_key,
            type=message.type,
            subject=message.subject or "",
            start=start,
            finish=finish,
        )
        encoded = key.encode()
        if len(encoded) > MAX_ROUTING_KEY_BYTES:
            key = encoded[:MAX_ROUTING_KEY_BYTES].decode("utf-8", "ignore")
        return key

    return render


def properties_of(message: Message) -> dict[str, Any]:
    """The basic properties every AMQP client sets from a message."""
    return {
        "content_type": message.content_type,
        "message_id": message.id,
        "type": message.type,
        "timestamp": int(message.time),
        "app_id": APP_ID,
    }


def queue_arguments(
    arguments: Mapping[str, Any],
    max_length: int | None = None,
    message_ttl: float | None = None,
) -> dict[str, Any]:
    """``arguments`` with ``x-max-length`` and ``x-message-ttl`` (given in
    seconds, declared in milliseconds) when set."""
    declared = dict(arguments)
    if max_length is not None:
        declared["x-max-length"] = max_length
    if message_ttl is not None:
        declared["x-message-ttl"] = round(message_ttl * 1000)
    return declared


class ExchangeSpec(msgspec.Struct, frozen=True):
    """The exchange events are published to. ``""`` is the default
    exchange: it routes by queue name and is neither declared nor bound to."""

    name: str
    type: str = "topic"
    durable: bool = True
    declare: bool = True
    """False when the exchange is managed elsewhere."""

    @property
    def declared(self) -> bool:
        """Whether the backend declares the exchange."""
        return self.declare and bool(self.name)

    def binding_keys(self, keys: Sequence[str]) -> tuple[str, ...]:
        """The keys a queue is bound to this exchange with, for ``keys``."""
        if not self.name:
            return ()
        if self.type == "fanout":
            return ("",)  # a fanout exchange ignores binding keys: one binding will do
        return tuple(keys)


class QueueSpec(msgspec.Struct, frozen=True):
    """A queue and the keys it is bound to the exchange with.

    A nameless queue is a subscriber's own: exclusive and deleted when the
    subscriber disconnects, named by the broker (or the client).
    """

    name: str
    keys: tuple[str, ...]
    durable: bool = False
    arguments: dict[str, Any] = {}

    @property
    def temporary(self) -> bool:
        """Whether this is a subscriber's own queue, gone when it disconnects."""
        return not self.name


class Topology(msgspec.Struct, frozen=True):
    """What the AMQP backends declare, worked out once for pika and Kombu.

    The exchange and, with ``queue``, a named queue that keeps events while
    no one consumes them, bound with ``keys``, declared with
    ``queue_durable`` and ``queue_arguments``.
    """

    exchange: ExchangeSpec
    queue: str | None = None
    keys: tuple[str, ...] = ("#",)
    queue_durable: bool = True
    queue_arguments: dict[str, Any] = {}

    def publisher_queue(self) -> QueueSpec | None:
        """The named queue the publisher declares before its first event, if any."""
        return self._named(self.queue, self.keys) if self.queue else None

    def check_subscription(
        self, keys: Sequence[str], queue: str | None, from_beginning: bool, options: str
    ) -> None:
        """Raise ValueError, saying what to set, for a subscription that
        could receive nothing, or nothing of what it asks for; ``options``
        is the backend's config path (``eventbus.backends.rabbitmq``)."""
        named = queue or self.queue
        if from_beginning and not named:
            raise ValueError(
                "AMQP brokers keep events only in queues: to read them from the beginning, "
                f"set {options}.queue (a durable queue the publisher declares, so events wait "
                "there) or subscribe with queue=... naming such a queue"
            )
        if not self.exchange.name and not named:
            raise ValueError(
                "the default exchange routes by queue name: subscribing to it needs "
                f"{options}.queue or queue=..."
            )
        if self.exchange.type == "direct" and "#" in keys:
            raise ValueError(
                "a direct exchange routes by exact key, so binding '#' receives nothing: "
                "pass bindings=[...] with the routing keys to receive"
            )

    def subscriber_queue(self, keys: Sequence[str], queue: str | None = None) -> QueueSpec:
        """The queue a subscriber consumes, bound with ``keys``: the named
        queue (``queue``, else this topology's), which holds what was
        published while no one read it; without one, a queue of its own,
        which gets only what is published once it is bound."""
        name = queue or self.queue
        if name:
            return self._named(name, keys)
        return QueueSpec("", self.exchange.binding_keys(keys))

    def _named(self, name: str, keys: Sequence[str]) -> QueueSpec:
        return QueueSpec(
            name, self.exchange.binding_keys(keys), self.queue_durable, self.queue_arguments
        )


class AmqpSubscribeOptions(SubscribeOptions):
    """What an AMQP subscriber (rabbitmq, kombu) may say when subscribing."""

    queue: Annotated[str, msgspec.Meta(min_length=1)] | None = None
    """The durable queue to consume; None: the ``queue`` option, or a new exclusive one."""
    bindings: str | Annotated[list[str], msgspec.Meta(min_length=1)] | None = None
    """Routing-key patterns to bind the queue with; None: the ``bindings``
    option (Kombu), or ``#``, everything."""
    prefetch: Annotated[int, msgspec.Meta(ge=1)] = 1000
    """Unacknowledged events the broker sends ahead."""


def not_found(reply: str, said: str = "") -> Problem:
    """The problem of a ``404 NOT_FOUND`` reply: a missing exchange (which
    the backend's ``create-missing`` creates) or queue; ``said`` is how the
    reply is shown."""
    from ..backends.diagnosis import Problem  # here: only an error needs it

    missing = re.search(r"no (exchange|queue) '([^']*)'", reply)
    if missing and missing.group(1) == "exchange":
        return Problem("missing", about=f"exchange {missing.group(2)!r}")
    if missing:
        return Problem("missing", said or reply, f"queue {missing.group(2)!r}", "create it")
    return Problem("missing", said or reply, "an exchange or queue it was asked for")


class PublisherConfirms:
    """What the broker has confirmed of one channel's publishes (publisher
    confirms): delivery tags count the channel's publishes from 1, and each
    ``basic.ack`` or ``basic.nack`` settles one tag, or every tag up to it
    (``multiple``), in any order."""

    def __init__(self) -> None:
        self.published = 0
        """Tags handed out: the channel's publishes so far."""
        self.nacked = 0
        """Publishes the broker refused (``basic.nack``)."""
        self._through = 0  # every tag up to this one is settled
        self._above: set[int] = set()  # settled tags beyond it

    def expect(self, count: int) -> None:
        """``count`` more messages were published on the channel."""
        self.published += count

    @property
    def unsettled(self) -> int:
        """Publishes neither acknowledged nor refused yet."""
        return self.published - self._through - len(self._above)

    def settle(self, tag: int, multiple: bool, *, refused: bool = False) -> None:
        """An ack (or, ``refused``, a nack) of ``tag``, or of all up to it."""
        before = self.unsettled
        if multiple or tag == self._through + 1:
            self._through = max(self._through, tag)
            above = self._above
            while self._through + 1 in above:
                self._through += 1
                above.discard(self._through)
            if above and min(above) <= self._through:
                above.difference_update([t for t in above if t <= self._through])
        elif tag > self._through:
            self._above.add(tag)
        if refused:
            self.nacked += before - self.unsettled
