"""AMQP 0-9-1 messages (RabbitMQ with pika, Kombu): routing key and properties."""

from __future__ import annotations

import string
from collections.abc import Callable
from typing import Any

from ..backends.contract import Message
from ..events import CONTENT_TYPE, TASK_TRANSITION

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
