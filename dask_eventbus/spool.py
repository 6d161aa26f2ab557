"""The durable spool: encoded messages on disk between the publisher and the broker.

A spool is a directory (``eventbus.spool.path``) of *segment* files, each a
magic line followed by *records*; one record is one batch of messages as the
publisher built them (body, id, sequence, source, ... unchanged), so what is
delivered from disk is exactly what would have been published directly::

    segment  := SEGMENT_MAGIC record*
    record   := head source first_id head_crc payload
    head     := ">4sIIIqqddHH": RECORD_MAGIC, payload length, payload CRC32,
                event count, first and last sequence, first and last event time,
                length of source, length of first_id
    head_crc := CRC32 of head, source and first_id (">I")
    payload  := msgpack array of Message arrays

The head has its own checksum, so a record whose payload is damaged still
tells which events it held (source and sequence range); a damaged head is
skipped by searching for the next record magic whose checksums hold.

Beside the segments: ``checkpoint`` (segment number and offset up to which
everything was delivered, with a CRC; replaced atomically, never fsynced: a
stale one only means duplicates), ``spool.lock`` (``flock``-ed by the owner,
holding its pid and host) and ``quarantine/`` (damaged parts, moved aside).

One writer appends (the publisher), one reader drains (the drain thread), and
a sync thread ``fsync``-s the segment being written at least every
``sync-interval``. Delivered segments are deleted as soon as the reader has
passed them; appends are refused once ``max-bytes`` would be exceeded.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import socket
import struct
import threading
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import msgspec

from .backends.contract import Message
from .config import ConfigError

logger = logging.getLogger("distributed.eventbus")

SEGMENT_MAGIC = b"DEBSPL1\n"
RECORD_MAGIC = b"DEBR"
SEGMENT_SUFFIX = ".seg"
CHECKPOINT = "checkpoint"
LOCK = "spool.lock"
QUARANTINE = "quarantine"

_HEAD = struct.Struct(">4sIIIqqddHH")
_CRC = struct.Struct(">I")
_CHECKPOINT = struct.Struct(">QQ")
# The delivered position is written at most this often (seconds) while a
# segment is being delivered: once per batch would cost more than reading it.
CHECKPOINT_INTERVAL = 0.1
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


def _write_checkpoint(path: str, segment: int, offset: int) -> None:
    data = _CHECKPOINT.pack(segment, offset)
    tmp = os.path.join(path, CHECKPOINT + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data + _CRC.pack(zlib.crc32(data)))
    os.replace(tmp, os.path.join(path, CHECKPOINT))


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def lock_owner(path: str) -> str:
    """Who holds the spool's lock, as its lock file says (``pid N on host H``)."""
    try:
        with open(os.path.join(path, LOCK)) as f:
            pid, _, host = f.read().strip().partition(" ")
    except OSError:
        return "an unknown process"
    return f"pid {pid or '?'} on host {host or '?'}"


def acquire_lock(path: str, wait: float = 0.0) -> int:
    """Lock the spool directory for this process; the lock file's descriptor.

    Waits up to ``wait`` seconds for another owner to let go (a publisher
    process still closing), then raises :class:`ConfigError` naming it.
    """
    os.makedirs(path, exist_ok=True)
    fd = os.open(os.path.join(path, LOCK), os.O_RDWR | os.O_CREAT, 0o644)
    deadline = time.monotonic() + wait
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except OSError:
            if time.monotonic() >= deadline:
                os.close(fd)
                raise ConfigError(
                    f"Invalid event bus config eventbus.spool.path = {path!r}: the spool is in "
                    f"use by another scheduler ({lock_owner(path)}); one spool directory "
                    "serves one scheduler at a time"
                ) from None
            time.sleep(0.1)
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()} {socket.gethostname()}\n".encode(), 0)
    return fd


def check_free(path: str, wait: float = 0.0) -> None:
    """Raise :class:`ConfigError` if another process owns the spool (lock, then let go)."""
    os.close(acquire_lock(path, wait))


@dataclass
class Damage:
    """Data the reader could not deliver: moved to quarantine, to be announced.

    ``source``, ``first`` and ``last`` are known when a damaged record's head
    held, or when the good records around the damage are of one source.
    """

    parts: int
    nbytes: int
    source: str | None = None
    run: str | None = None
    first: int | None = None
    last: int | None = None


@dataclass
class Batch:
    """What the drain delivers next: a record's messages, and what was lost before it."""

    messages: list[Message]
    count: int
    position: tuple[int, int]
    damage: list[Damage] = field(default_factory=list)


def _run_of(head: Head) -> str:
    suffix = f"-{head.first}"
    return head.first_id[: -len(suffix)] if head.first_id.endswith(suffix) else head.first_id


class Spool:
    """An open spool directory: append batches, read them back in order, reclaim.

    Raises :class:`ConfigError` when another process holds the directory.
    """

    def __init__(
        self,
        path: str,
        max_bytes: int,
        segment_bytes: int,
        sync_interval: float,
        lock_wait: float = 0.0,
    ) -> None:
        self.path = path = os.path.abspath(os.path.expanduser(path))
        self.max_bytes = max_bytes
        self.segment_bytes = segment_bytes
        self.sync_interval = sync_interval
        self._lock_fd = acquire_lock(path, lock_wait)
        self._quarantine = os.path.join(path, QUARANTINE)
        os.makedirs(self._quarantine, exist_ok=True)
        self._cond = threading.Condition()
        self._sizes: dict[int, int] = {}
        self.events = 0
        """Undelivered events on disk."""
        self.quarantined_parts = 0
        self.quarantined_events = 0
        self.quarantined_bytes = 0
        self.truncated_bytes = 0
        """Torn writes at the end of a crashed owner's last segment, cut on start."""
        self.synced_through: dict[str, int] = {}
        """Per source, the last sequence number known to be on disk (fsynced)."""
        self._appended_through: dict[str, int] = {}
        self._head_time: float | None = None
        self._dirty = False
        self._closed = False
        self._prev: Head | None = None  # the last good record the reader returned
        self._delivered: tuple[int, int] | None = None  # not yet in the checkpoint file
        self._checkpointed = 0.0
        self._recover()
        self._wfd = self._create_segment(self._wseg)
        self._rfd: int | None = None
        self._rfd_seg = -1
        self._stop = threading.Event()
        self._syncer = threading.Thread(
            target=self._sync_loop, name="dask-eventbus-spool-sync", daemon=True
        )
        self._syncer.start()

    # ------------------------------------------------------------ start-up

    def _recover(self) -> None:
        path = self.path
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(path, CHECKPOINT + ".tmp"))
        segments = list_segments(path)
        checkpoint = read_checkpoint(path)
        if checkpoint is None or not segments or checkpoint[0] < segments[0]:
            checkpoint = (segments[0] if segments else 1, len(SEGMENT_MAGIC))
        for number in segments:
            name = os.path.join(path, segment_name(number))
            if number < checkpoint[0]:  # delivered; the crash came before its deletion
                os.unlink(name)
                continue
            self._sizes[number] = os.path.getsize(name)
        if self._sizes:
            self._cut_torn_tail(max(self._sizes))
        # Segment numbers run on from the checkpoint's, so that a number
        # missing between the reader and the writer means a deleted segment.
        self._wseg = max([*self._sizes, checkpoint[0]]) + 1
        self._rseg, self._roff = checkpoint
        if self._rseg not in self._sizes:  # an empty segment, removed
            self._rseg = min((n for n in self._sizes if n > self._rseg), default=self._wseg)
            self._roff = 0
        elif self._roff <= len(SEGMENT_MAGIC):
            self._roff = 0  # from the start: its magic is checked
        else:
            self._roff = min(self._roff, self._sizes[self._rseg])
        self.events = sum(self._count(number) for number in self._sizes)

    def _cut_torn_tail(self, number: int) -> None:
        """Truncate what a crash left half-written at the end of the last segment."""
        name = os.path.join(self.path, segment_name(number))
        size = self._sizes[number]
        fd = os.open(name, os.O_RDWR)
        try:
            if size < len(SEGMENT_MAGIC):  # created, never written
                os.close(fd)
                fd = -1
                os.unlink(name)
                del self._sizes[number]
                return
            at = len(SEGMENT_MAGIC)
            while at < size:
                head = read_head(fd, at, size)
                if isinstance(head, Head):
                    at = head.end
                    continue
                following = next_good(fd, at, size)
                if following is None:
                    os.ftruncate(fd, at)
                    os.fsync(fd)
                    self.truncated_bytes += size - at
                    self._sizes[number] = at
                    break
                at = following.offset  # damage in the middle: the reader quarantines it
        finally:
            if fd >= 0:
                os.close(fd)

    def _count(self, number: int) -> int:
        """Undelivered events in a segment, by record heads."""
        events = 0
        with self._segment_fd(number) as fd:
            size = self._sizes[number]
            at = self._roff_for(number)
            while at < size:
                found = read_head(fd, at, size)
                head = found if isinstance(found, Head) else next_good(fd, at, size)
                if head is None:
                    break
                events += head.events
                at = head.end
        return events

    def _roff_for(self, number: int) -> int:
        return max(self._roff, len(SEGMENT_MAGIC)) if number == self._rseg else len(SEGMENT_MAGIC)

    @contextlib.contextmanager
    def _segment_fd(self, number: int) -> Iterator[int]:
        fd = os.open(os.path.join(self.path, segment_name(number)), os.O_RDONLY)
        try:
            yield fd
        finally:
            os.close(fd)

    def _create_segment(self, number: int) -> int:
        fd = os.open(
            os.path.join(self.path, segment_name(number)),
            os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND,
            0o644,
        )
        os.write(fd, SEGMENT_MAGIC)
        os.fsync(fd)
        _fsync_dir(self.path)
        self._sizes[number] = len(SEGMENT_MAGIC)
        return fd

    # ------------------------------------------------------------ writer

    def append(self, messages: list[Message]) -> bool:
        """Write ``messages`` (any number of sources) at the end; False if the
        spool has no room for them (nothing is written then)."""
        records = []
        start = 0
        for i in range(1, len(messages) + 1):
            if i == len(messages) or messages[i].source != messages[start].source:
                records.extend(self._encode(messages[start:i]))
                start = i
        with self._cond:
            if self._closed:
                return False
            if self.bytes() + sum(len(r) for r, _ in records) > self.max_bytes:
                return False
            for record, chunk in records:
                size = self._sizes[self._wseg]
                if size > len(SEGMENT_MAGIC) and size + len(record) > self.segment_bytes:
                    self._roll()
                os.write(self._wfd, record)
                self._sizes[self._wseg] += len(record)
                self.events += len(chunk)
                self._appended_through[chunk[-1].source] = chunk[-1].sequence
            self._dirty = True
            self._cond.notify_all()
        return True

    def _encode(self, messages: list[Message]) -> list[tuple[bytes, list[Message]]]:
        record = encode_record(messages)
        if len(record) <= self.segment_bytes // 2 or len(messages) == 1:
            return [(record, messages)]
        half = len(messages) // 2
        return self._encode(messages[:half]) + self._encode(messages[half:])

    def _roll(self) -> None:
        os.fsync(self._wfd)
        os.close(self._wfd)
        self.synced_through.update(self._appended_through)
        self._wseg += 1
        self._wfd = self._create_segment(self._wseg)

    def sync(self) -> None:
        """Make everything appended so far durable."""
        with self._cond:
            if not self._dirty or self._closed:
                return
            self._dirty = False
            fd = os.dup(self._wfd)
            through = dict(self._appended_through)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        with self._cond:
            self.synced_through.update(through)

    def _sync_loop(self) -> None:
        while not self._stop.wait(self.sync_interval):
            try:
                self.sync()
            except OSError as exc:  # a full or failing disk: say so, keep trying
                logger.error("dask-eventbus: cannot sync the spool %s: %s", self.path, exc)

    def wait_for_room(self, timeout: float) -> None:
        with self._cond:
            self._cond.wait(timeout)

    # ------------------------------------------------------------ reader

    def read(self) -> Batch | None:
        """The next undelivered record (None when there is none yet).

        Damage met on the way is quarantined and reported with the batch;
        call :meth:`commit` with its position once it was delivered.
        """
        damage: list[Damage] = []
        while True:
            with self._cond:
                if self._closed:
                    return None
                segments = sorted(n for n in self._sizes if n >= self._rseg)
                if segments[0] != self._rseg:  # quarantined as a whole
                    self._move_to(segments[0])
                    continue
                limit, writing = self._sizes[self._rseg], self._rseg == self._wseg
                if writing and self._roff >= limit:
                    self.events = 0  # everything appended was delivered
                    self._write_checkpoint()
                    return self._pending_damage(damage)
            if self._roff >= limit:
                following = segments[1]  # the writer's segment at least
                if following > self._rseg + 1:  # deleted by hand
                    damage.append(Damage(parts=following - self._rseg - 1, nbytes=0))
                self._move_to(following)
                continue
            fd = self._reader_fd()
            if self._roff == 0:  # a segment's start: check its magic, go on past it
                self._check_segment_magic(fd, damage)
                continue
            head = read_head(fd, self._roff, limit)
            if isinstance(head, Head):
                messages = read_payload(fd, head)
                if messages is None:
                    self._quarantine_part(fd, head.offset, head.end, head.events)
                    damage.append(
                        Damage(1, head.end - head.offset, head.source, _run_of(head),
                               head.first, head.last)
                    )  # fmt: skip
                    self._roff = head.end
                    continue
                for item in damage:
                    self._bound(item, head)
                self._prev = head
                self._head_time = head.first_time
                self._roff = head.end  # the drain delivers it before it reads again
                return Batch(messages, head.events, (self._rseg, head.end), damage)
            good = next_good(fd, self._roff, limit)
            end = good.offset if good is not None else limit
            if good is None and writing:
                return self._pending_damage(damage)  # the rest is not written yet
            self._quarantine_part(fd, self._roff, end, 0)
            damage.append(Damage(1, end - self._roff))
            self._roff = end

    def _pending_damage(self, damage: list[Damage]) -> Batch | None:
        if not damage:
            return None
        return Batch([], 0, (self._rseg, self._roff), damage)

    def _bound(self, damage: Damage, following: Head) -> None:
        """Fill in an unknown range from the good records around the damage."""
        prev = self._prev
        if damage.first is not None or prev is None or prev.source != following.source:
            return
        if following.first > prev.last + 1:
            damage.source, damage.run = prev.source, _run_of(prev)
            damage.first, damage.last = prev.last + 1, following.first - 1

    def _check_segment_magic(self, fd: int, damage: list[Damage]) -> None:
        if os.pread(fd, len(SEGMENT_MAGIC), 0) == SEGMENT_MAGIC:
            self._roff = len(SEGMENT_MAGIC)
            return
        number = self._rseg
        name = segment_name(number)
        with self._cond:
            size = self._sizes.pop(number)
        self._close_reader()
        os.replace(os.path.join(self.path, name), os.path.join(self._quarantine, name + ".bad"))
        self._count_quarantined(size, 0)
        damage.append(Damage(1, size))
        self._move_to(number + 1)

    def _reader_fd(self) -> int:
        if self._rfd_seg != self._rseg:
            self._close_reader()
            self._rfd = os.open(os.path.join(self.path, segment_name(self._rseg)), os.O_RDONLY)
            self._rfd_seg = self._rseg
        assert self._rfd is not None
        return self._rfd

    def _close_reader(self) -> None:
        if self._rfd is not None:
            os.close(self._rfd)
        self._rfd, self._rfd_seg = None, -1

    def _move_to(self, number: int) -> None:
        """Go on with segment ``number``; everything before it is done with."""
        self._rseg, self._roff = number, 0
        self._commit_position(number, 0)

    def _quarantine_part(self, fd: int, start: int, end: int, events: int) -> None:
        data = os.pread(fd, end - start, start)
        name = f"{segment_name(self._rseg)}.{start}.bad"
        with open(os.path.join(self._quarantine, name), "wb") as f:
            f.write(data)
        self._count_quarantined(len(data), events)

    def _count_quarantined(self, nbytes: int, events: int) -> None:
        with self._cond:
            self.quarantined_parts += 1
            self.quarantined_bytes += nbytes
            self.quarantined_events += events
            self.events -= events

    def commit(self, batch: Batch) -> None:
        """``batch`` was delivered: advance the checkpoint, reclaim passed segments."""
        with self._cond:
            self.events -= batch.count
            self._head_time = None
        self._commit_position(*batch.position)

    def _commit_position(self, number: int, offset: int) -> None:
        """Everything before ``offset`` of segment ``number`` was delivered.

        The checkpoint is written at once when segments can be deleted (it
        must be on record first), else at most every CHECKPOINT_INTERVAL: a
        crash before it costs duplicates, not events.
        """
        with self._cond:
            if self._closed:
                return
            self._delivered = (number, max(offset, len(SEGMENT_MAGIC)))
            passed = [n for n in self._sizes if n < number]
            if passed or time.monotonic() - self._checkpointed >= CHECKPOINT_INTERVAL:
                self._write_checkpoint()
            for old in passed:
                if self._rfd_seg == old:
                    self._close_reader()
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(self.path, segment_name(old)))
                del self._sizes[old]
            self._cond.notify_all()

    def _write_checkpoint(self) -> None:
        if self._delivered is not None:
            _write_checkpoint(self.path, *self._delivered)
            self._delivered = None
        self._checkpointed = time.monotonic()

    # ------------------------------------------------------------ state

    def bytes(self) -> int:
        """Bytes of segments on disk."""
        return sum(self._sizes.values())

    def snapshot(self) -> dict[str, Any]:
        """The spool's statistics, as ``stats()`` reports them."""
        with self._cond:
            head_time = self._head_time
            return {
                "path": self.path,
                "bytes": self.bytes(),
                "max_bytes": self.max_bytes,
                "events": self.events,
                "oldest_event_time": head_time if self.events else None,
                "quarantined_parts": self.quarantined_parts,
                "quarantined_events": self.quarantined_events,
                "quarantined_bytes": self.quarantined_bytes,
                "truncated_bytes": self.truncated_bytes,
            }

    def close(self) -> None:
        """Sync, stop the sync thread and let go of the directory."""
        self._stop.set()
        if self._syncer is not threading.current_thread():
            self._syncer.join()
        with contextlib.suppress(OSError):
            self.sync()
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._write_checkpoint()
            os.close(self._wfd)
            self._close_reader()
            self._cond.notify_all()
        os.close(self._lock_fd)


# ---------------------------------------------------------------- inspect and verify


def inspect_spool(path: str, verify: bool = False) -> dict[str, Any]:
    """What a spool directory holds, read without taking it over.

    Per source: its undelivered events' sequence ranges, count, bytes, oldest
    and newest event time. ``damaged`` lists records whose checksums fail
    (every payload is read and checked when ``verify``, else only the heads);
    damage at the very end of the last segment is a ``torn`` write, which the
    next start truncates. ``quarantined`` lists the parts moved aside.
    """
    path = os.path.abspath(os.path.expanduser(path))
    if not os.path.isdir(path):
        raise FileNotFoundError(f"no spool directory at {path}")
    segments = list_segments(path)
    checkpoint = read_checkpoint(path)
    sources: dict[str, dict[str, Any]] = {}
    damaged: list[dict[str, Any]] = []
    torn: dict[str, Any] | None = None
    total_bytes = 0
    for index, number in enumerate(segments):
        name = os.path.join(path, segment_name(number))
        size = os.path.getsize(name)
        total_bytes += size
        if checkpoint is not None and number < checkpoint[0]:
            continue
        start = checkpoint[1] if checkpoint is not None and number == checkpoint[0] else 0
        last_segment = index == len(segments) - 1
        with open(name, "rb") as f:
            fd = f.fileno()
            if size >= len(SEGMENT_MAGIC) and os.pread(fd, len(SEGMENT_MAGIC), 0) != SEGMENT_MAGIC:
                damaged.append(_damaged(number, 0, size, "bad segment header", None))
                continue
            at = max(start, len(SEGMENT_MAGIC))
            while at < size:
                found = read_head(fd, at, size)
                if isinstance(found, Head):
                    if verify and read_payload(fd, found) is None:
                        bad = _damaged(number, at, found.end, "payload checksum", found)
                        damaged.append(bad)
                    else:
                        _add(sources, found)
                    at = found.end
                    continue
                good = next_good(fd, at, size)
                if good is None and last_segment:
                    torn = {"segment": number, "offset": at, "bytes": size - at}
                    break
                end = good.offset if good is not None else size
                damaged.append(_damaged(number, at, end, "record header", None))
                at = end
    if segments:
        first = max(checkpoint[0], segments[0]) if checkpoint else segments[0]
        expected = set(range(first, segments[-1] + 1))
        for number in sorted(expected - set(segments)):
            missing = {"segment": number, "offset": 0, "bytes": None, "reason": "missing segment"}
            damaged.append(missing)
    quarantine = os.path.join(path, QUARANTINE)
    quarantined = (
        [
            {"file": name, "bytes": os.path.getsize(os.path.join(quarantine, name))}
            for name in sorted(os.listdir(quarantine))
        ]
        if os.path.isdir(quarantine)
        else []
    )
    for source in sources.values():
        source["ranges"] = _ranges(source.pop("sequences"))
    return {
        "path": path,
        "segments": len(segments),
        "bytes": total_bytes,
        "delivered_up_to": list(checkpoint) if checkpoint else None,
        "owner": lock_owner(path) if _locked(path) else None,
        "events": sum(s["events"] for s in sources.values()),
        "sources": sources,
        "damaged": damaged,
        "torn": torn,
        "quarantined": quarantined,
        "verified": verify,
    }


def _damaged(number: int, start: int, end: int, reason: str, head: Head | None) -> dict[str, Any]:
    entry: dict[str, Any] = {"segment": number, "offset": start, "bytes": end - start}
    entry["reason"] = reason
    if head is not None:
        entry.update(source=head.source, first_sequence=head.first, last_sequence=head.last)
    return entry


def _add(sources: dict[str, dict[str, Any]], head: Head) -> None:
    source = sources.setdefault(
        head.source,
        {
            "events": 0,
            "bytes": 0,
            "oldest": head.first_time,
            "newest": head.last_time,
            "sequences": [],
        },
    )
    source["events"] += head.events
    source["bytes"] += head.end - head.offset
    source["oldest"] = min(source["oldest"], head.first_time)
    source["newest"] = max(source["newest"], head.last_time)
    source["sequences"].append((head.first, head.last))


def _ranges(pairs: list[tuple[int, int]]) -> list[list[int]]:
    """Contiguous runs of sequence numbers, ``[[first, last], ...]``."""
    runs: list[list[int]] = []
    for first, last in sorted(pairs):
        if runs and first <= runs[-1][1] + 1:
            runs[-1][1] = max(runs[-1][1], last)
        else:
            runs.append([first, last])
    return runs


def _locked(path: str) -> bool:
    try:
        fd = os.open(os.path.join(path, LOCK), os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)
    return False
