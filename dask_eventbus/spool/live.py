"""The live spool: one writer appends, one reader drains, a thread syncs.

Delivered segments are deleted as soon as the reader has passed them;
appends are refused once ``max-bytes`` would be exceeded. The checkpoint is
replaced atomically, never fsynced: a stale one only means duplicates.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from ..backends.contract import Message
from .format import (
    CHECKPOINT,
    QUARANTINE,
    SEGMENT_MAGIC,
    Gap,
    Head,
    encode_record,
    fsync_dir,
    list_segments,
    read_checkpoint,
    read_payload,
    run_of,
    scan,
    segment_name,
    write_checkpoint,
)
from .lock import acquire_lock

logger = logging.getLogger("distributed.eventbus")

# The delivered position is written at most this often (seconds) while a
# segment is being delivered: once per batch would cost more than reading it.
CHECKPOINT_INTERVAL = 0.1


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
            for item in scan(fd, len(SEGMENT_MAGIC), size):
                # Damage in the middle is left to the reader, which quarantines it.
                if isinstance(item, Gap) and item.following is None:
                    os.ftruncate(fd, item.start)
                    os.fsync(fd)
                    self.truncated_bytes += size - item.start
                    self._sizes[number] = item.start
        finally:
            if fd >= 0:
                os.close(fd)

    def _count(self, number: int) -> int:
        """Undelivered events in a segment, by record heads."""
        with self._segment_fd(number) as fd:
            records = scan(fd, self._roff_for(number), self._sizes[number])
            return sum(item.events for item in records if isinstance(item, Head))

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
        fsync_dir(self.path)
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
            found = next(scan(fd, self._roff, limit))
            if isinstance(found, Head):
                head = found
                messages = read_payload(fd, head)
                if messages is None:
                    self._quarantine_part(fd, head.offset, head.end, head.events)
                    damage.append(
                        Damage(1, head.end - head.offset, head.source, run_of(head),
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
            if found.following is None and writing:
                return self._pending_damage(damage)  # the rest is not written yet
            self._quarantine_part(fd, found.start, found.end, 0)
            damage.append(Damage(1, found.end - found.start))
            self._roff = found.end

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
            damage.source, damage.run = prev.source, run_of(prev)
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
            write_checkpoint(self.path, *self._delivered)
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
