"""The spool's file format: segments of records, and the checkpoint.

::

    segment  := SEGMENT_MAGIC record*
    record   := head source first_id head_crc payload
    head     := ">4sIIIqqddHH": RECORD_MAGIC, payload length, payload CRC32,
                event count, first and last sequence, first and last event time,
                length of source, length of first_id
    head_crc := CRC32 of head, source and first_id (">I")
    payload  := msgpack array of Message arrays

The head has its own checksum, so a record whose payload is damaged still
tells which events it held (source and sequence range); a damaged head is
skipped by searching for the next record magic whose checksums hold
(:func:`scan`). The checkpoint holds the segment number and offset up to
which everything was delivered, with a CRC.
"""

from __future__ import annotations

import os
import struct
import zlib
from collections.abc import Iterator
from typing import NamedTuple

import msgspec

from ..backends.contract import Message

SEGMENT_MAGIC = b"DEBSPL1\n"
RECORD_MAGIC = b"DEBR"
SEGMENT_SUFFIX = ".seg"
CHECKPOINT = "checkpoint"
QUARANTINE = "quarantine"

_HEAD = struct.Struct(">4sIIIqqddHH")
_CRC = struct.Struct(">I")
_CHECKPOINT = struct.Struct(">QQ")
# The largest payload a head may claim: a bound for a damaged length field.
MAX_PAYLOAD = 1 << 31

_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(list[Message])


def encode_record(messages: list[Message]) -> bytes:
    """One record holding ``messages`` (which share one source)."""
    payload = _encoder.encode(messages)
    first, last = messages[0], messages[-1]
    source, first_id = first.source.encode(), first.id.encode()
    head = _HEAD.pack(
        RECORD_MAGIC,
        len(payload),
        zlib.crc32(payload),
        len(messages),
        first.sequence,
        last.sequence,
        first.time,
        last.time,
        len(source),
        len(first_id),
    )
    head_crc = zlib.crc32(first_id, zlib.crc32(source, zlib.crc32(head)))
    return b"".join((head, source, first_id, _CRC.pack(head_crc), payload))


class Head(NamedTuple):
    """What a record's head says (trusted: its checksum held)."""

    offset: int
    end: int
    events: int
    first: int
    last: int
    first_time: float
    last_time: float
    source: str
    first_id: str
    payload_at: int
    payload_crc: int


def read_head(fd: int, offset: int, limit: int) -> Head | str:
    """The head of the record at ``offset``, or why there is none:
    ``"short"`` (the bytes before ``limit`` end first) or ``"bad"``."""
    if offset + _HEAD.size > limit:
        return "short"
    fixed = os.pread(fd, _HEAD.size, offset)
    magic, size, crc, count, first, last, t0, t1, slen, ilen = _HEAD.unpack(fixed)
    if magic != RECORD_MAGIC:
        return "bad"
    names_at = offset + _HEAD.size
    payload_at = names_at + slen + ilen + _CRC.size
    if payload_at > limit:
        return "short"
    names = os.pread(fd, slen + ilen + _CRC.size, names_at)
    (head_crc,) = _CRC.unpack_from(names, slen + ilen)
    if zlib.crc32(names[: slen + ilen], zlib.crc32(fixed)) != head_crc:
        return "bad"
    if size > MAX_PAYLOAD or count < 1:
        return "bad"
    end = payload_at + size
    if end > limit:
        return "short"
    try:
        source, first_id = names[:slen].decode(), names[slen : slen + ilen].decode()
    except UnicodeDecodeError:
        return "bad"
    return Head(offset, end, count, first, last, t0, t1, source, first_id, payload_at, crc)


def read_payload(fd: int, head: Head) -> list[Message] | None:
    """The messages of a record, or None when its payload is damaged."""
    payload = os.pread(fd, head.end - head.payload_at, head.payload_at)
    if zlib.crc32(payload) != head.payload_crc:
        return None
    try:
        messages = _decoder.decode(payload)
    except (msgspec.DecodeError, ValueError, TypeError):
        return None
    return messages if len(messages) == head.events else None


def next_good(fd: int, offset: int, limit: int) -> Head | None:
    """The first record after ``offset`` whose head checks out (resynchronizing)."""
    chunk_size = 1 << 20
    at = offset + 1
    while at < limit:
        data = os.pread(fd, min(chunk_size + len(RECORD_MAGIC), limit - at), at)
        found = data.find(RECORD_MAGIC)
        while found >= 0 and found < chunk_size:
            head = read_head(fd, at + found, limit)
            if isinstance(head, Head):
                return head
            found = data.find(RECORD_MAGIC, found + 1)
        at += chunk_size
    return None


class Gap(NamedTuple):
    """Bytes between records that hold no good record head: damage, or a
    torn write when no good record follows."""

    start: int
    end: int
    following: Head | None
    """The good record after the gap, None when it runs to the limit."""


def scan(fd: int, offset: int, limit: int) -> Iterator[Head | Gap]:
    """The records from ``offset`` to ``limit`` in order, and the gaps
    between them; nothing follows a gap that runs to ``limit``."""
    at = offset
    while at < limit:
        found = read_head(fd, at, limit)
        if isinstance(found, Head):
            yield found
            at = found.end
            continue
        following = next_good(fd, at, limit)
        end = following.offset if following is not None else limit
        yield Gap(at, end, following)
        at = end


def run_of(head: Head) -> str:
    """The run id of a record's first event (its id without the sequence)."""
    suffix = f"-{head.first}"
    return head.first_id[: -len(suffix)] if head.first_id.endswith(suffix) else head.first_id


def segment_name(number: int) -> str:
    return f"{number:020d}{SEGMENT_SUFFIX}"


def list_segments(path: str) -> list[int]:
    numbers = []
    for name in os.listdir(path):
        stem = name[: -len(SEGMENT_SUFFIX)]
        if name.endswith(SEGMENT_SUFFIX) and stem.isdigit():
            numbers.append(int(stem))
    return sorted(numbers)


def read_checkpoint(path: str) -> tuple[int, int] | None:
    try:
        with open(os.path.join(path, CHECKPOINT), "rb") as f:
            data = f.read()
    except OSError:
        return None
    if len(data) != _CHECKPOINT.size + _CRC.size:
        return None
    if zlib.crc32(data[: _CHECKPOINT.size]) != _CRC.unpack_from(data, _CHECKPOINT.size)[0]:
        return None
    segment, offset = _CHECKPOINT.unpack_from(data)
    return segment, offset


def write_checkpoint(path: str, segment: int, offset: int) -> None:
    data = _CHECKPOINT.pack(segment, offset)
    tmp = os.path.join(path, CHECKPOINT + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data + _CRC.pack(zlib.crc32(data)))
    os.replace(tmp, os.path.join(path, CHECKPOINT))


def fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
