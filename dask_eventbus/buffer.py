"""The bounded buffer between scheduler hooks and the publisher, and its ledger.

Hooks call :attr:`Pipeline.capture` with a record whose sequence number
comes from :attr:`Pipeline.next_sequence`. Capturing is a deque
append: O(1), no lock, no I/O. When the buffer is full the overflow policy
drops either the oldest records (``deque(maxlen)`` evicts them) or the new one.
Drops are not counted on the hot path: the pipeline thread sees them as gaps
in the sequence numbers it takes out, and announces each gap with a
``dask.eventbus.dropped`` event that takes the gap's last sequence number.

The pipeline thread wakes when a batch is full or the flush interval passed
and hands the batch to a *sink*:

* in ``thread`` mode a :class:`~dask_eventbus.publisher.Publisher` in this process normalizes and
  encodes the batch once and publishes it; a failed publish keeps the batch,
  closes the backend, backs off exponentially with jitter, reopens and
  publishes it again: at-least-once delivery, in order;
* in ``process`` mode a :class:`~dask_eventbus.process.ProcessSink` ships
  the raw records to a supervised publisher process that runs the same
  :class:`~dask_eventbus.publisher.Publisher` there (see ``process/``).
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from .backends.contract import Backend
from .config import Settings
from .events import DROPPED
from .pacing import RateLimitedLog
from .publisher import Sink
from .records import DroppedRecord, Record

logger = logging.getLogger("distributed.eventbus")

# How long closing waits for the publisher thread once its backend was aborted.
ABORT_WAIT = 5.0


class Pipeline:
    """Buffer, pipeline thread and drop accounting for one plugin."""

    def __init__(self, backend: Backend, sink: Sink, settings: Settings) -> None:
        self.backend = backend
        self.sink = sink
        queue = settings.queue
        self.max_events = queue.max_events
        self.batch_size = queue.batch_size
        self.flush_interval = queue.flush_interval
        self.policy = queue.overflow
        self.close_timeout = settings.close_timeout

        self._counter = itertools.count(1)
        self.next_sequence: Callable[[], int] = self._counter.__next__
        self._wake = threading.Event()
        self._closing = threading.Event()
        if self.policy == "drop-oldest":
            self._buffer: deque[Record] = deque(maxlen=self.max_events)
        else:
            self._buffer = deque()
        self._overflowed = [0]  # drop-newest: counted where a record is refused
        self.capture: Callable[[Record], None] = self._capture_function()
        self._thread: threading.Thread | None = None
        self._pending: list[Record] = []
        self._last_taken = 0
        self._final_sequence = 0
        self._deadline = float("inf")
        self.dropped = 0
        """Drops announced so far; see :meth:`dropped_so_far` for the live count."""
        self.undelivered = 0
        self._drop_log = RateLimitedLog()
        self._drops_unlogged = 0

    # ------------------------------------------------------------ hot path

    def _capture_function(self) -> Callable[[Record], None]:
        buffer, append, wake = self._buffer, self._buffer.append, self._wake.set
        batch_size, max_events = self.batch_size, self.max_events

        if self.policy == "drop-oldest":

            def capture(record: Record) -> None:
                append(record)
                if len(buffer) == batch_size:
                    wake()

        else:
            overflowed = self._overflowed

            def capture(record: Record) -> None:
                size = len(buffer)
                if size < max_events:
                    append(record)
                    if size + 1 == batch_size:
                        wake()
                else:
                    overflowed[0] += 1

        return capture

    # ------------------------------------------------------------ lifecycle

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self._run, name=f"dask-eventbus-{self.backend.name}", daemon=True
        )
        self._thread.start()

    def stop_capture(self) -> None:
        """Mark the end of the sequence; call it on the thread that captures.

        Callers stop calling :attr:`capture` and :attr:`next_sequence` then:
        anything captured later is neither delivered nor counted.
        """
        self._final_sequence = self.next_sequence() - 1

    def close(self) -> None:
        """Deliver what is left within ``close-timeout``. Blocks."""
        if not self._final_sequence:
            self.stop_capture()
        self._deadline = time.monotonic() + self.close_timeout
        self.sink.begin_close(self._deadline)
        self._closing.set()
        self._wake.set()
        if self._thread is not None:
            # The backend bounds each call by its own timeouts; the margin
            # covers one call that started just before the deadline.
            self._thread.join(self.close_timeout + 1.0)
            if self._thread.is_alive():
                logger.error(
                    "dask-eventbus: the %s backend did not return within close-timeout "
                    "(%.1fs); giving up on %d undelivered events",
                    self.backend.name,
                    self.close_timeout,
                    self.queued(),
                )
                self.undelivered = self.queued()
                # Nothing may outlive close: a publish still waiting for the
                # broker gives up now, not whenever the broker comes back.
                self.backend.abort()
                self._thread.join(ABORT_WAIT)
        else:
            self.undelivered = len(self._buffer)

    # ------------------------------------------------------------ statistics

    def queued(self) -> int:
        return len(self._buffer) + len(self._pending) + self.sink.in_flight()

    def dropped_so_far(self) -> int:
        """Drops including those not yet announced (the pipeline thread may be
        stuck publishing while the queue overflows)."""
        if self.policy == "drop-newest":
            return self._overflowed[0]
        try:
            unseen = self._buffer[0].sequence - self._last_taken - 1
        except IndexError:
            unseen = 0
        return self.dropped + max(0, unseen)

    def stats(self) -> dict[str, Any]:
        delivery = self.sink.stats
        return {
            "backend": self.backend.name,
            "destination": self.backend.destination(),
            "connected": delivery.connected,
            "queued": self.queued(),
            "published": delivery.published,
            "dropped": self.dropped_so_far(),
            "oversized": delivery.oversized,
            "refused": delivery.refused,
            "retries": delivery.retries,
            "publish_errors": delivery.publish_errors,
            "last_error": delivery.last_error,
            "last_publish_time": delivery.last_publish_time,
            "undelivered": self.undelivered,
            **({"spool": delivery.spool} if delivery.spool is not None else {}),
        }

    # ------------------------------------------------------------ pipeline thread

    def _run(self) -> None:
        try:
            self.sink.start()
            self._loop()
        except Exception:  # a bug here must not take the scheduler down with it
            logger.exception("dask-eventbus publisher thread failed")
        finally:
            left = len(self._buffer) + len(self._pending)
            try:
                left += self.sink.finish()
            except Exception:
                logger.exception("dask-eventbus: closing the publisher failed")
            self.undelivered = left
            if left:
                logger.warning(
                    "dask-eventbus: closed with %d events undelivered to %s",
                    left,
                    self.backend.destination(),
                )

    def _loop(self) -> None:
        buffer = self._buffer
        while True:
            if self._closing.is_set() and time.monotonic() >= self._deadline:
                return
            if not self._pending:
                if len(buffer) < self.batch_size and not self._closing.is_set():
                    self._wake.wait(self.flush_interval)
                    self._wake.clear()
                self._pending = self._take_batch()
                if not self._pending:
                    if self._closing.is_set():
                        return
                    self.sink.idle()
                    continue
            try:
                if not self.sink.send(self._pending):
                    return
            except Exception:
                # A bug must cost this batch, not every event after it.
                lost = self._pending
                announcement = lost[0]
                if (
                    len(lost) == 1
                    and type(announcement) is DroppedRecord
                    and announcement.policy == "error"
                ):
                    self._pending = []  # not even the announcement goes out
                else:
                    self._pending = [self._lost_batch(lost)]
                continue
            self._pending = []

    def _take_batch(self) -> list[Record]:
        buffer, records = self._buffer, list[Record]()
        popleft = buffer.popleft
        try:
            for _ in range(self.batch_size):
                record = popleft()
                sequence = record.sequence
                if sequence > self._last_taken + 1:
                    records.append(self._dropped_record(sequence - 1))
                self._last_taken = sequence
                records.append(record)
        except IndexError:
            pass
        if self._closing.is_set() and not buffer:
            final = self._final_sequence
            if final > self._last_taken:
                records.append(self._dropped_record(final))
                self._last_taken = final
        return records

    def _lost_batch(self, records: list[Record]) -> DroppedRecord:
        """A dropped-event record standing for a batch that could not be sent."""
        logger.exception(
            "dask-eventbus: could not publish a batch of %d events; they are dropped and announced",
            len(records),
        )
        self.dropped += len(records)
        return DroppedRecord.spanning(
            records[0].sequence, records[-1].sequence, "error", count=len(records)
        )

    def _dropped_record(self, last: int) -> DroppedRecord:
        record = DroppedRecord.spanning(self._last_taken + 1, last, self.policy)
        self.dropped += record.count
        self._log_drops(record.count)
        return record

    def _log_drops(self, count: int) -> None:
        self._drops_unlogged += count
        if not self._drop_log.occurred():
            return
        dropped, self._drops_unlogged = self._drops_unlogged, 0
        if dropped == self.dropped:
            logger.error(
                "dask-eventbus: the event queue was full (eventbus.queue.max-events=%d), "
                "%d events were dropped (%s). Dropped events are announced with %s "
                "events; raise max-events or fix the backend to stop this.",
                self.max_events,
                dropped,
                self.policy,
                DROPPED,
            )
        else:
            logger.warning(
                "dask-eventbus: %d more events dropped on a full queue in the last "
                "%.0fs (%d in all)",
                dropped,
                time.monotonic() - self._drop_log.last_logged,
                self.dropped,
            )
        self._drop_log.logged()
