"""Reading events back: the subscription runtime every readable backend shares.

A backend's ``subscribe`` returns a :class:`Subscription` subclass that
fetches raw deliveries; this module decodes them (structured or batched),
filters by type, and acknowledges each event once the next one is asked for.
A backend whose consumer holds a connection subclasses
:class:`ReconnectingSubscription`, which follows the broker through outages.
"""

from __future__ import annotations

import fnmatch
import logging
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from types import TracebackType
from typing import Any, NamedTuple

import msgspec

from ..events import Event
from ..pacing import Backoff, RateLimitedLog

logger = logging.getLogger("distributed.eventbus")


class Delivery(NamedTuple):
    """One raw message read from a broker and how to acknowledge it."""

    body: bytes
    token: Any = None
    content_type: str | None = None
    """What the broker says the body is, where it says (a header); None: a
    CloudEvent, structured or batched, as the body shows."""


class Subscription(Iterator[Event]):
    """An iterator of events read back from a backend.

    Each event is acknowledged (where the broker has acknowledgements) when
    the next one is requested or the subscription is closed normally, so an
    event whose processing raised is delivered again to the next consumer.
    Use it as a context manager, or call :meth:`close`.
    """

    def __init__(self) -> None:
        self._types: list[str] | None = None
        # Decoded events not yet yielded; the last one of each delivery
        # carries that delivery, acknowledged once the event was yielded.
        self._ready: deque[tuple[Event, Delivery | None]] = deque()
        self._unacked: Delivery | None = None
        self.closed = False

    # ---- what backends implement

    def fetch(self, timeout: float) -> Sequence[Delivery]:
        """Wait up to ``timeout`` seconds for messages; return what arrived."""
        raise NotImplementedError

    def ack(self, token: Any) -> None:
        """Acknowledge one delivery by its token."""

    def _close(self) -> None:
        """Release the backend's consumer resources."""

    # ---- what consumers use

    def set_types(self, patterns: Sequence[str] | None) -> None:
        """Yield only events whose type matches one of these glob patterns."""
        self._types = list(patterns) if patterns else None

    def poll(self, timeout: float | None = None) -> Event | None:
        """The next event, or ``None`` when none arrived within ``timeout``."""
        self._ack_previous()
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if self._ready:
                event, delivery = self._ready.popleft()
                self._unacked = delivery
                return event
            remaining = 1.0 if deadline is None else deadline - time.monotonic()
            if remaining <= 0:
                return None
            for delivery in self.fetch(min(remaining, 1.0)):
                events = self._decode(delivery)
                if events:
                    self._ready.extend((event, None) for event in events[:-1])
                    self._ready.append((events[-1], delivery))
                else:
                    self.ack(delivery.token)

    def __next__(self) -> Event:
        if self.closed:
            raise StopIteration
        event = self.poll()
        assert event is not None
        return event

    def __iter__(self) -> Subscription:
        return self

    def close(self, *, ack: bool = True) -> None:
        """Stop reading; acknowledges the last event unless ``ack`` is false."""
        if self.closed:
            return
        try:
            if ack:
                self._ack_previous()
        finally:
            self.closed = True
            self._close()

    def __enter__(self) -> Subscription:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close(ack=exc_type is None)

    def _ack_previous(self) -> None:
        if self._unacked is not None:
            delivery, self._unacked = self._unacked, None
            self.ack(delivery.token)

    def _decode(self, delivery: Delivery) -> list[Event]:
        """The events of one message: one, or several in batched content mode."""
        try:
            events = decode_delivery(delivery)
        except (msgspec.DecodeError, msgspec.ValidationError, ValueError) as exc:
            logger.warning("Skipping a message that is not a dask-eventbus CloudEvent: %s", exc)
            return []
        if self._types is None:
            return events
        return [e for e in events if any(fnmatch.fnmatchcase(e.type, p) for p in self._types)]


class ReconnectingSubscription(Subscription):
    """A subscription on a connection of its own, which it makes again when it breaks.

    Backends implement :meth:`_connect`, :meth:`_read`, :meth:`_acknowledge`
    and :meth:`_disconnect`, and declare in :attr:`connection_errors` what
    their client raises when the connection is gone. On one of those this
    drops the connection and reconnects with the shared backoff (up to
    :attr:`MAX_WAIT` apart). It warns when the connection is lost (at most
    once a minute for one that keeps breaking) and when reconnecting fails
    (at most once a minute while the broker stays away), and says when it is
    connected again. An acknowledgement is sent only on the connection that
    delivered the message, unless :attr:`acks_outlive_connections`: the
    broker delivers the others again.
    """

    FIRST_WAIT = 0.25
    MAX_WAIT = 2.0
    connection_errors: tuple[type[BaseException], ...] = (OSError,)
    """What the client raises when the connection is gone."""
    acks_outlive_connections = False
    """Whether a delivery can be acknowledged on a later connection (Redis
    acknowledges entries by id; AMQP delivery tags belong to their channel)."""

    def __init__(
        self,
        broker: str,
        explain: Callable[[BaseException], str],
        log: logging.Logger = logger,
    ) -> None:
        super().__init__()
        self._log = log
        self._broker = broker
        self._explain = explain
        self._connected = False
        self._generation = 0
        self._backoff = Backoff(self.FIRST_WAIT, self.MAX_WAIT)
        self._losses = RateLimitedLog()  # a connection that keeps breaking
        self._outage = RateLimitedLog()  # a broker that stays away

    # ---- what backends implement

    def _connect(self) -> None:
        """Connect and start consuming; raise on failure."""
        raise NotImplementedError

    def _read(self, timeout: float) -> Sequence[Delivery]:
        """Wait up to ``timeout`` seconds for messages on the connection."""
        raise NotImplementedError

    def _acknowledge(self, token: Any) -> None:
        """Acknowledge one delivery of the current connection."""

    def _disconnect(self) -> None:
        """Drop the connection without waiting for the broker; never raises."""

    @property
    def keeps_events_while_away(self) -> bool:
        """Whether the broker keeps what is published while disconnected."""
        return True

    # ---- the runtime

    def start(self) -> None:
        """Connect for the first time; raises what connecting raised."""
        try:
            self._open()
        except BaseException:
            self._disconnect()
            raise

    def fetch(self, timeout: float) -> list[Delivery]:
        deadline = time.monotonic() + timeout
        if not self._connected and not self._reconnect(deadline):
            return []
        try:
            deliveries = self._read(max(deadline - time.monotonic(), 0.0))
        except self.connection_errors as exc:
            self._lost(exc)
            return []
        if self.acks_outlive_connections:
            return list(deliveries)
        generation = self._generation
        return [d._replace(token=(generation, d.token)) for d in deliveries]

    def ack(self, token: Any) -> None:
        if not self.acks_outlive_connections:
            generation, token = token
            if not self._connected or generation != self._generation:
                return
        self._acknowledge(token)

    def _open(self) -> None:
        self._connect()
        self._generation += 1
        self._connected = True

    def _lost(self, exc: BaseException) -> None:
        self._connected = False
        self._disconnect()
        if self._losses.occurred():
            unlogged = self._losses.logged()
            missed = (
                "" if self.keeps_events_while_away else "; events published meanwhile are missed"
            )
            repeats = f" (and {unlogged} times more since the last warning)" if unlogged else ""
            self._log.warning(
                "dask-eventbus: lost the %s consumer connection (%s); reconnecting%s%s",
                self._broker,
                self._explain(exc),
                missed,
                repeats,
            )

    def _reconnect(self, deadline: float) -> bool:
        try:
            self._open()
        except self.connection_errors as exc:
            self._disconnect()
            if self._outage.occurred():
                self._outage.logged()
                self._log.warning(
                    "dask-eventbus: cannot reconnect the %s consumer yet (retrying with "
                    "backoff up to every %gs, logging every %.0fs): %s",
                    self._broker,
                    self.MAX_WAIT,
                    self._outage.interval,
                    self._explain(exc),
                )
            delay = self._backoff.next_delay()
            time.sleep(max(0.0, min(delay, deadline - time.monotonic())))
            return False
        self._backoff.reset()
        lasted = self._outage.ended()
        if lasted is not None:
            self._log.warning(
                "dask-eventbus: the %s consumer is connected again after %.1fs",
                self._broker,
                lasted,
            )
        return True


def decode_delivery(delivery: Delivery) -> list[Event]:
    """The events of one delivery; raises for a body that is no CloudEvent
    (its content type says otherwise, or it does not decode)."""
    content_type = delivery.content_type
    if content_type is not None and not content_type.startswith("application/cloudevents"):
        raise ValueError(f"not a CloudEvent: Content-Type {content_type!r}")
    return decode_body(delivery.body)


def decode_body(body: bytes) -> list[Event]:
    """Events in a message body: a structured-mode event or a JSON batch of them."""
    if body[:1] == b"[" or body.lstrip()[:1] == b"[":
        return _batch_decoder.decode(body)
    return [Event.from_json(body)]


_batch_decoder = msgspec.json.Decoder(list[Event])
