"""The framework's reconnecting subscription, on a connection the test breaks
at will: what every broker's subscriber (rabbitmq, kombu, redis, nats)
inherits, checked once without a broker."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import pytest

from dask_eventbus.backends import Delivery, ReconnectingSubscription
from dask_eventbus.testing import synthetic_messages


class Broken(ConnectionError):
    pass


class FlakyConsumer(ReconnectingSubscription):
    """Reads ``waiting`` bodies; ``down`` makes reads and connects fail."""

    FIRST_WAIT = MAX_WAIT = 0.001
    connection_errors = (Broken,)

    def __init__(self) -> None:
        super().__init__("Flaky", lambda exc: f"explained {exc}")
        self.waiting: list[bytes] = []
        self.down = False
        self.connections = 0
        self.acknowledged: list[tuple[int, int]] = []

    def _connect(self) -> None:
        if self.down:
            raise Broken("refused")
        self.connections += 1

    def _read(self, timeout: float) -> Sequence[Delivery]:
        if self.down:
            raise Broken("gone")
        bodies, self.waiting = self.waiting, []
        return [Delivery(body, (self.connections, i)) for i, body in enumerate(bodies)]

    def _acknowledge(self, token: Any) -> None:
        self.acknowledged.append(token)


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


def test_an_outage_is_told_once_each_way_and_old_acks_are_void(
    caplog: pytest.LogCaptureFixture,
) -> None:
    messages = synthetic_messages(4)
    consumer = FlakyConsumer()
    consumer.start()
    consumer.waiting = [m.body for m in messages[:2]]
    first = consumer.poll(timeout=0.1)
    assert first is not None and first.id == messages[0].id

    consumer.down = True
    with caplog.at_level(logging.WARNING, "distributed.eventbus"):
        second = consumer.poll(timeout=0.01)  # read before the connection broke
        assert second is not None and second.id == messages[1].id
        for _ in range(5):
            assert consumer.poll(timeout=0.01) is None
        consumer.down = False
        consumer.waiting = [m.body for m in messages[2:]]
        again = consumer.poll(timeout=0.1)
    assert again is not None and again.id == messages[2].id
    consumer.ack((1, (1, 0)))  # a delivery of the first connection: void
    consumer.close()

    warnings = warnings_of(caplog)
    assert sum("lost the Flaky consumer connection (explained gone)" in w for w in warnings) == 1
    assert sum("cannot reconnect the Flaky consumer yet" in w for w in warnings) == 1
    assert "the Flaky consumer is connected again" in warnings[-1]
    assert consumer.acknowledged == [(1, 0), (1, 1), (2, 0)]


def test_a_connection_that_keeps_breaking_is_told_at_most_once_a_minute(
    caplog: pytest.LogCaptureFixture,
) -> None:
    consumer = FlakyConsumer()
    consumer.start()
    with caplog.at_level(logging.WARNING, "distributed.eventbus"):
        for _ in range(3):
            consumer.down = True
            consumer.poll(timeout=0.01)
            consumer.down = False
            consumer.poll(timeout=0.01)
    consumer.close()
    warnings = warnings_of(caplog)
    assert sum("lost the Flaky consumer connection" in w for w in warnings) == 1, warnings
    assert consumer.connections == 4
