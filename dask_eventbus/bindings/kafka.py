"""Kafka records: key, headers and value of each message (the CloudEvents
Kafka binding, structured content mode)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, NamedTuple

from ..backends.contract import Message
from ..events import CONTENT_TYPE, SEQUENCE_DIGITS, SPECVERSION, rfc3339

Header = tuple[str, str | bytes | None]
KeyMode = Literal["subject", "source", "type", "none"]
HeaderMode = Literal["content-type", "attributes", "none"]

# librdkafka copies headers at produce(), so every record can share this list.
CONTENT_TYPE_HEADERS: list[Header] = [("content-type", CONTENT_TYPE)]


class KafkaRecord(NamedTuple):
    key: str | None
    value: bytes
    headers: list[Header] | None


def key_function(mode: KeyMode) -> Callable[[Message], str | None]:
    """The record key of a message: it picks the partition, so it orders."""
    if mode == "subject":
        # Events without a subject (dask.eventbus.dropped) stay in order with
        # the rest of their scheduler's stream.
        return lambda message: message.subject if message.subject is not None else message.source
    if mode == "source":
        return lambda message: message.source
    if mode == "type":
        return lambda message: message.type
    return lambda message: None


def headers_of(message: Message, mode: HeaderMode) -> list[Header] | None:
    """``content-type`` (as structured mode asks), plus the ``ce_*`` attributes
    with ``attributes`` (as in the binding's binary mode), or none."""
    if mode == "none":
        return None
    if mode == "content-type":
        if message.content_type == CONTENT_TYPE:
            return CONTENT_TYPE_HEADERS
        return [("content-type", message.content_type)]
    headers: list[Header] = [("content-type", message.content_type)]
    if message.content_type != CONTENT_TYPE:  # a batch is no single event
        headers += [("ce_id", message.id), ("ce_type", message.type)]
        return headers
    headers += [
        ("ce_specversion", SPECVERSION),
        ("ce_id", message.id),
        ("ce_source", message.source),
        ("ce_type", message.type),
        ("ce_time", rfc3339(message.time)),
    ]
    if message.subject is not None:
        headers.append(("ce_subject", message.subject))
    headers.append(("ce_sequence", str(message.sequence).zfill(SEQUENCE_DIGITS)))
    return headers


def to_record(message: Message, key: KeyMode, headers: HeaderMode) -> KafkaRecord:
    """The record ``message`` becomes."""
    return KafkaRecord(key_function(key)(message), message.body, headers_of(message, headers))
