"""Reading events back: the subscription runtime every readable backend shares.

A backend's ``subscribe`` returns a :class:`Subscription` subclass that
fetches raw deliveries; this module decodes them (structured or batched),
filters by type, and acknowledges each event once the next one is asked for.
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
            events = decode_body(delivery.body)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            logger.warning("Skipping a message that is not a dask-eventbus CloudEvent: %s", exc)
            return []
        if self._types is None:
            return events
        return [e for e in events if any(fnmatch.fnmatchcase(e.type, p) for p in self._types)]


class ConsumerReconnect:
    """A subscription's attempts to reconnect its consumer.

    While the broker stays unreachable it tries again with the shared
    backoff (up to :attr:`MAX_WAIT` apart) and warns at most once a minute;
    it says so once the consumer is connected again.
    """

    FIRST_WAIT = 0.25
    MAX_WAIT = 2.0

    def __init__(
        self, log: logging.Logger, broker: str, explain: Callable[[BaseException], str]
    ) -> None:
        self._log = log
        self._broker = broker
        self._explain = explain
        self._backoff = Backoff(self.FIRST_WAIT, self.MAX_WAIT)
        self._outage = RateLimitedLog()

    def attempt(
        self,
        connect: Callable[[], object],
        deadline: float,
        errors: tuple[type[BaseException], ...] = (Exception,),
        cleanup: Callable[[], None] = lambda: None,
    ) -> bool:
        """Call ``connect``; on one of ``errors``, ``cleanup``, back off (not
        past ``deadline``) and return False."""
        try:
            connect()
        except errors as exc:
            cleanup()
            if self._outage.occurred():
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


def decode_body(body: bytes) -> list[Event]:
    """Events in a message body: a structured-mode event or a JSON batch of them."""
    if body[:1] == b"[" or body.lstrip()[:1] == b"[":
        return _batch_decoder.decode(body)
    return [Event.from_json(body)]


_batch_decoder = msgspec.json.Decoder(list[Event])
