"""Subscription behaviour shared by every backend: batches, filtering, acks."""

from __future__ import annotations

from typing import Any

from dask_eventbus.backends import Delivery, Subscription, batch_body
from dask_eventbus.testing import synthetic_messages


class ListSubscription(Subscription):
    """Hands out fixed deliveries and records acknowledgements."""

    def __init__(self, bodies: list[bytes]) -> None:
        super().__init__()
        self.pending = [Delivery(body, token=i) for i, body in enumerate(bodies)]
        self.acked: list[Any] = []

    def fetch(self, timeout: float) -> list[Delivery]:
        pending, self.pending = self.pending, []
        return pending

    def ack(self, token: Any) -> None:
        self.acked.append(token)


def test_a_batched_message_yields_its_events_and_is_acked_after_the_last() -> None:
    messages = synthetic_messages(5)
    subscription = ListSubscription([batch_body(messages[:3]), messages[3].body, b"not json"])
    got = [subscription.poll(0.1) for _ in range(3)]
    assert [e.id for e in got] == [m.id for m in messages[:3]]
    # Garbage is skipped (and acknowledged) as it arrives; the batch waits
    # until its last event has been handled.
    assert subscription.acked == [2]
    assert subscription.poll(0.1).id == messages[3].id
    assert subscription.acked == [2, 0]
    assert subscription.poll(0.1) is None
    assert subscription.acked == [2, 0, 1]


def test_filtered_out_messages_are_acked_at_once() -> None:
    messages = synthetic_messages(3)
    subscription = ListSubscription([m.body for m in messages])
    subscription.set_types(["dask.worker.*"])
    assert subscription.poll(0.1) is None
    assert sorted(subscription.acked) == [0, 1, 2]


def test_closing_after_an_error_leaves_the_last_event_unacknowledged() -> None:
    messages = synthetic_messages(2)
    subscription = ListSubscription([m.body for m in messages])
    try:
        with subscription:
            subscription.poll(0.1)
            raise RuntimeError("the consumer failed while handling the event")
    except RuntimeError:
        pass
    assert subscription.acked == [] and subscription.closed
