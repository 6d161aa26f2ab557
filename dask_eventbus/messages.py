"""From captured records to what backends publish: normalized, encoded messages.

Oversized events (over ``eventbus.events.max-event-bytes``) are replaced by a
``dask.eventbus.oversized`` event keeping their id, time, sequence and subject.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from .backends.contract import Message
from .events import CONTENT_TYPE, OVERSIZED, TASK_TRANSITION, Event, encode_many
from .normalize import Normalizer
from .records import DroppedRecord, Record
from .stats import DeliveryStats

logger = logging.getLogger("distributed.eventbus")


_transition_keys: dict[tuple[str, str], str] = {}


def _transition_routing_key(start: str, finish: str) -> str:
    routing_key = _transition_keys.get((start, finish))
    if routing_key is None:
        routing_key = _transition_keys[start, finish] = f"{TASK_TRANSITION}.{start}.{finish}"
    return routing_key


def build_messages(
    normalizer: Normalizer, records: Sequence[Record], stats: DeliveryStats | None = None
) -> list[Message]:
    """Normalize and encode records into what backends publish (counting
    oversized events in ``stats``)."""
    events = [normalizer.event(record) for record in records]
    messages: list[Message] = []
    append = messages.append
    limit = normalizer.max_event_bytes
    for record, event, body in zip(records, events, encode_many(events), strict=True):
        if len(body) > limit:
            event, body = _in_place_of_oversized(normalizer, event, len(body))
            if stats is not None:
                stats.oversized += 1
        type_ = routing_key = event.type
        if type_ == TASK_TRANSITION:
            routing_key = _transition_routing_key(event.data.start, event.data.finish)
        append(
            Message(
                body,
                event.id,
                type_,
                event.subject,
                record.sequence,
                record.time,
                routing_key,
                CONTENT_TYPE,
                event.source,
            )
        )
    return messages


def loss_announcement(
    normalizer: Normalizer,
    first: int,
    last: int,
    policy: str,
    stats: DeliveryStats | None = None,
) -> Message:
    """The ``dask.eventbus.dropped`` message announcing that sequence numbers
    ``first`` to ``last`` of ``normalizer``'s run were lost by ``policy``;
    it takes the last of them, so that readers see no gap."""
    (message,) = build_messages(normalizer, [DroppedRecord.spanning(first, last, policy)], stats)
    return message


def _in_place_of_oversized(normalizer: Normalizer, event: Event, size: int) -> tuple[Event, bytes]:
    logger.warning(
        "dask-eventbus: event %s (%s, subject %r) is %d bytes of JSON, over "
        "eventbus.events.max-event-bytes (%d); publishing a %s event in its place",
        event.id,
        event.type,
        (event.subject or "")[:200],
        size,
        normalizer.max_event_bytes,
        OVERSIZED,
    )
    replacement = normalizer.oversized(event, size)
    return replacement, replacement.to_json()
