"""The frames between the scheduler's process and its publisher process.

A frame is a 4-byte big-endian length and a msgpack array: parent to child
``["init", {...}]``, ``["batch", id, records]`` (each record an array
``[type, sequence, time, *fields]``, decoded into its record type),
``["deadline", seconds]`` (closing has begun: stop backing off),
``["close", seconds]``; child to parent ``["ready"]``, ``["failed", text]``,
``["ack", id, stats]``, ``["stats", stats]``, ``["log", level, text]`` and
``["closed", stats]``.
"""

from __future__ import annotations

import struct
import threading
from collections.abc import Callable
from typing import IO, Any

import msgspec

from ..events import safe_text
from ..records import AnyRecord, LogRecord
from ..stats import DeliveryStats, Histogram

_LENGTH = struct.Struct(">I")


def _pack_fallback(obj: object) -> object:
    # Whatever msgpack cannot carry travels as text; the child makes JSON of it.
    return safe_text(obj)


class ParentFrame(msgspec.Struct, array_like=True, tag_field="kind"):
    """What the parent sends the publisher process."""


class Init(ParentFrame, tag="init"):
    state: dict[str, Any]


class BatchFrame(ParentFrame, tag="batch"):
    batch_id: int
    records: list[AnyRecord]


class Deadline(ParentFrame, tag="deadline"):
    seconds: float


class Close(ParentFrame, tag="close"):
    seconds: float


_encoder = msgspec.msgpack.Encoder(enc_hook=_pack_fallback)
_decoder = msgspec.msgpack.Decoder()
parent_frames = msgspec.msgpack.Decoder(Init | BatchFrame | Deadline | Close)


def length_prefixed(payload: bytes) -> bytes:
    """A packed frame as it goes down the pipe."""
    return _LENGTH.pack(len(payload)) + payload


def write_frame(stream: IO[bytes], message: Any, lock: threading.Lock | None = None) -> None:
    data = length_prefixed(_encoder.encode(message))
    if lock is None:
        stream.write(data)
        stream.flush()
    else:
        with lock:
            stream.write(data)
            stream.flush()


def read_frame(stream: IO[bytes], decode: Callable[[bytes], Any] = _decoder.decode) -> Any:
    """The next frame, or None at end of stream."""
    header = stream.read(_LENGTH.size)
    if len(header) < _LENGTH.size:
        return None
    (size,) = _LENGTH.unpack(header)
    payload = stream.read(size)
    if len(payload) < size:
        return None
    return decode(payload)


def pack(message: ParentFrame) -> bytes:
    """``message`` packed, whatever the records in it hold."""
    try:
        return _encoder.encode(message)
    except (OverflowError, TypeError, ValueError):
        # Integers beyond 64 bits, say, in a log_event message: as text.
        return _encoder.encode(_packable(msgspec.to_builtins(message, enc_hook=_pack_fallback)))


def _packable(obj: Any) -> Any:
    if isinstance(obj, int) and not isinstance(obj, bool) and not -(2**63) <= obj < 2**64:
        return str(obj)
    if isinstance(obj, list):
        return [_packable(item) for item in obj]
    if isinstance(obj, dict):
        return {_packable(k): _packable(v) for k, v in obj.items()}
    return obj


def decode_parent_frame(payload: bytes) -> ParentFrame:
    try:
        return parent_frames.decode(payload)
    except msgspec.ValidationError:
        # A field of a type the hooks do not promise (a change in what
        # distributed passes, say) costs that event, as it would cost its
        # normalization in thread mode, not the batch and all after it.
        _, batch_id, records = _decoder.decode(payload)
        return BatchFrame(batch_id, [_record_or_error(record) for record in records])


def _record_or_error(fields: list[Any]) -> AnyRecord:
    try:
        return msgspec.convert(fields, AnyRecord)
    except msgspec.ValidationError as exc:
        return LogRecord(
            fields[1],
            fields[2],
            "dask-eventbus.normalization-error",
            {"type": safe_text(fields[0]), "error": safe_text(exc)[:1000]},
        )


# What a stats frame carries of DeliveryStats: counters add up across
# children, the latest report's values replace, histograms add up.
_COUNTERS = ("published", "retries", "publish_errors", "oversized", "refused")
_LATEST = ("last_error", "last_publish_time", "connected", "spool")
_HISTOGRAMS = ("publish_seconds", "delivery_seconds")


def stats_state(stats: DeliveryStats) -> dict[str, Any]:
    """``stats`` as a stats frame carries them."""
    state = {name: getattr(stats, name) for name in _COUNTERS + _LATEST}
    state.update({name: getattr(stats, name).state() for name in _HISTOGRAMS})
    return state


def merged_stats(base: DeliveryStats, state: dict[str, Any]) -> DeliveryStats:
    """``base`` (children that exited) plus the running child's latest report."""
    merged = DeliveryStats()
    for name in _COUNTERS:
        setattr(merged, name, getattr(base, name) + state[name])
    merged.last_error = state["last_error"] or base.last_error
    merged.last_publish_time = state["last_publish_time"] or base.last_publish_time
    merged.connected = state["connected"]
    merged.spool = state["spool"]
    for name in _HISTOGRAMS:
        histogram: Histogram = getattr(merged, name)
        histogram.add(*getattr(base, name).state())
        histogram.add(*state[name])
    return merged
