"""Messages to publish in tests, publishing them, and reading what a backend
delivers back."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Sequence

from ..backends import Backend, Message, Subscription
from ..events import Event
from ..messages import build_messages
from ..normalize import Normalizer
from ..records import TransitionRecord


def unique_name(prefix: str = "dask-eventbus-test") -> str:
    """A name no other test uses: for streams, queues, topics, files."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def synthetic_messages(count: int, subjects: int = 7, run_id: str = "test") -> list[Message]:
    """``count`` task-transition messages spread over ``subjects`` task keys,
    sequence numbers 1 to ``count``."""
    normalizer = Normalizer(f"/tests/{run_id}", run_id)
    states = ["released", "waiting", "processing", "memory"]
    records = [
        TransitionRecord(
            seq,
            time.time(),
            f"task-{seq % subjects}",
            states[seq % 3],
            states[seq % 3 + 1],
            f"stimulus-{seq}",
        )
        for seq in range(1, count + 1)
    ]
    return build_messages(normalizer, records)


def publish_batches(backend: Backend, batches: Sequence[Sequence[Message]]) -> None:
    """Open ``backend``, send each batch (in its content mode), close it."""
    backend.open()
    try:
        for batch in batches:
            backend.send(batch)
    finally:
        backend.close()


def read_events(
    subscription: Subscription,
    *,
    count: int | None = None,
    until: Callable[[Event], bool] | None = None,
    timeout: float = 30.0,
) -> list[Event]:
    """Events from ``subscription`` until ``count`` arrived or ``until`` holds;
    fails after ``timeout`` seconds."""
    events: list[Event] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        event = subscription.poll(timeout=min(1.0, deadline - time.monotonic()))
        if event is None:
            continue
        events.append(event)
        if count is not None and len(events) >= count:
            return events
        if until is not None and until(event):
            return events
    raise AssertionError(
        f"timed out after {timeout}s with {len(events)} events "
        f"(wanted count={count}, until={until})"
    )


def read_raw(
    subscription: Subscription,
    count: int | None = None,
    *,
    until: Callable[[Event], bool] | None = None,
    timeout: float = 30.0,
) -> list[bytes]:
    """Message bodies as the broker holds them, until ``count`` or ``until``."""
    bodies: list[bytes] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for delivery in subscription.fetch(1.0):
            bodies.append(delivery.body)
            subscription.ack(delivery.token)
            if count is not None and len(bodies) >= count:
                return bodies
            if until is not None and until(Event.from_json(delivery.body)):
                return bodies
    raise AssertionError(f"timed out after {timeout}s with {len(bodies)} messages")
