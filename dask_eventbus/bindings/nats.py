"""NATS messages: the subject, headers and payload of each message (the
CloudEvents NATS binding, structured content mode), and back.

A message goes to ``<subject-prefix>.<routing key>``, so that NATS subject
wildcards select events: ``dask-events.dask.task.transition.*.erred`` are the
failures. ``Nats-Msg-Id`` names the event across schedulers (its source and
id), so JetStream drops the copies a retried publish sends within its
duplicate window.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

from ..backends.contract import BATCH_ROUTING_KEY, Message
from ..events import CONTENT_TYPE

if TYPE_CHECKING:
    from ..backends.subscription import Delivery

MSG_ID_HEADER = "Nats-Msg-Id"
CONTENT_TYPE_HEADER = "Content-Type"
_WILDCARDS = ("*", ">")


class NatsRecord(NamedTuple):
    """What a message becomes on NATS."""

    subject: str
    payload: bytes
    headers: dict[str, str]


def check_subject_prefix(prefix: str) -> None:
    """Raise ValueError naming the problem if ``prefix`` cannot start a subject."""
    if not prefix:
        raise ValueError("subject-prefix must not be empty")
    tokens = prefix.split(".")
    if any(not token for token in tokens):
        raise ValueError(f"subject-prefix {prefix!r} has an empty token (leading, trailing, ..)")
    if any(c.isspace() for c in prefix) or any(token in _WILDCARDS for token in tokens):
        raise ValueError(
            f"subject-prefix {prefix!r} must be dot-separated tokens without spaces "
            "and without the wildcards * and >"
        )


def subject_of(message: Message, prefix: str) -> str:
    """``<prefix>.<routing key>``: the type, plus ``.<start>.<finish>`` for transitions."""
    return f"{prefix}.{message.routing_key}"


def message_id(message: Message) -> str:
    """The ``Nats-Msg-Id`` of a message: unique per event across schedulers."""
    return f"{message.source}#{message.id}"


def to_record(message: Message, prefix: str, deduplicate: bool = True) -> NatsRecord:
    """The NATS message ``message`` becomes; its payload is the untouched CloudEvent.

    Its headers are ``Content-Type`` and, with ``deduplicate``, ``Nats-Msg-Id``.
    """
    headers = {CONTENT_TYPE_HEADER: message.content_type}
    if deduplicate:
        headers[MSG_ID_HEADER] = message_id(message)
    return NatsRecord(subject_of(message, prefix), message.body, headers)


def delivery_of(payload: bytes, headers: Mapping[str, str] | None, token: Any = None) -> Delivery:
    """A NATS message as the subscription reads it: its payload, and the
    content type its header names (structured mode when it names none)."""
    # Here: a publisher process, which reads nothing back, need not load it.
    from ..backends.subscription import Delivery

    content_type = (headers or {}).get(CONTENT_TYPE_HEADER, CONTENT_TYPE)
    return Delivery(payload, token, content_type)


def subject_filters(prefix: str, types: Sequence[str] | None) -> list[str] | None:
    """Subjects that select at least the events whose type matches ``types``
    (glob patterns, as ``subscribe`` takes), or None when they do not map onto
    subjects (the subscription then filters by itself).

    An exact type ``T`` maps onto ``<prefix>.T`` and ``<prefix>.T.>`` (the
    transitions' states follow the type); ``T.*`` onto ``<prefix>.T.>``.
    Batches (batched content mode) hold any type: their subject is always
    included. None of the subjects overlaps another, as JetStream requires.
    """
    if not types:
        return None
    filters: list[str] = []
    for pattern in types:
        if pattern.endswith(".*") and not _has_glob(pattern[:-2]):
            filters.append(f"{prefix}.{pattern[:-2]}.>")
        elif not _has_glob(pattern):
            filters += [f"{prefix}.{pattern}", f"{prefix}.{pattern}.>"]
        else:
            return None
    filters.append(f"{prefix}.{BATCH_ROUTING_KEY}")
    # JetStream refuses overlapping filters: keep none that another's ``>`` covers.
    wide = [f[:-1] for f in filters if f.endswith(".>")]
    return [
        f for f in dict.fromkeys(filters) if not any(f.startswith(w) and f != w + ">" for w in wide)
    ]


def _has_glob(pattern: str) -> bool:
    return any(c in pattern for c in "*?[]") or any(t in _WILDCARDS for t in pattern.split("."))
