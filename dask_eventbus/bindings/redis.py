"""Redis stream entries: one XADD per message, its fields, and back."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from ..backends.contract import Message

EVENT_FIELD = b"event"


def entry_fields(message: Message) -> list[tuple[bytes, bytes]]:
    """The fields of the entry a message becomes: ``type``, ``subject`` (when
    there is one), ``id`` and ``sequence`` to filter on, and the untouched
    CloudEvent in ``event``."""
    fields = [(b"type", message.type.encode("utf-8", "backslashreplace"))]
    if message.subject is not None:
        fields.append((b"subject", message.subject.encode("utf-8", "backslashreplace")))
    fields += [
        (b"id", message.id.encode("utf-8", "backslashreplace")),
        (b"sequence", b"%d" % message.sequence),
        (EVENT_FIELD, message.body),
    ]
    return fields


def xadd_commands(messages: Sequence[Message], stream: str, maxlen: int) -> bytes:
    """The batch's ``XADD`` commands in the Redis protocol, as one buffer.

    The same fields as :func:`entry_fields`, packed here rather than by
    redis-py's pipeline: it costs the publisher (and so the scheduler, whose
    GIL it shares in thread mode) about a third less CPU per event. Bodies
    are copied in untouched.
    """
    head = [b"XADD", stream.encode()]
    if maxlen:
        head += [b"MAXLEN", b"~", b"%d" % maxlen]
    head.append(b"*")
    prefix = b"".join(b"$%d\r\n%s\r\n" % (len(arg), arg) for arg in head)
    with_subject = b"*%d\r\n%s$4\r\ntype\r\n" % (len(head) + 10, prefix)
    without_subject = b"*%d\r\n%s$4\r\ntype\r\n" % (len(head) + 8, prefix)
    parts: list[bytes] = []
    append = parts.append
    for m in messages:
        type_ = m.type.encode("utf-8", "backslashreplace")
        if m.subject is None:
            append(without_subject)
            append(b"$%d\r\n%s\r\n" % (len(type_), type_))
        else:
            subject = m.subject.encode("utf-8", "backslashreplace")
            append(with_subject)
            append(
                b"$%d\r\n%s\r\n$7\r\nsubject\r\n$%d\r\n%s\r\n"
                % (len(type_), type_, len(subject), subject)
            )
        id_ = m.id.encode("utf-8", "backslashreplace")
        sequence = b"%d" % m.sequence
        body = m.body
        append(
            b"$2\r\nid\r\n$%d\r\n%s\r\n$8\r\nsequence\r\n$%d\r\n%s\r\n"
            b"$5\r\nevent\r\n$%d\r\n" % (len(id_), id_, len(sequence), sequence, len(body))
        )
        append(body)
        append(b"\r\n")
    return b"".join(parts)


def body_of(fields: Mapping[bytes, bytes] | None) -> bytes | None:
    """The CloudEvent an entry holds; None for an entry trimmed away."""
    if not fields:
        return None
    return fields.get(EVENT_FIELD, b"")
