"""The bounded buffer between scheduler hooks and the publisher, and delivery.

Hooks call :attr:`Pipeline.capture` with a record whose first item is a
sequence number from :attr:`Pipeline.next_sequence`. Capturing is a deque
append: O(1), no lock, no I/O. When the buffer is full the overflow policy
drops either the oldest records (``deque(maxlen)`` evicts them) or the new one.
Drops are not counted on the hot path: the pipeline thread sees them as gaps
in the sequence numbers it takes out, and announces each gap with a
``dask.eventbus.dropped`` event that takes the gap's last sequence number.

The pipeline thread wakes when a batch is full or the flush interval passed
and hands the batch to a *sink*:

* in ``thread`` mode a :class:`Publisher` in this process normalizes and
  encodes the batch once and publishes it; a failed publish keeps the batch,
  closes the backend, backs off exponentially with jitter, reopens and
  publishes it again: at-least-once delivery, in order;
* in ``process`` mode a :class:`~dask_eventbus.process.ProcessSink` ships
  the raw records to a supervised publisher process that runs the same
  :class:`Publisher` there (see ``process.py``).
"""

from __future__ import annotations

import bisect
import itertools
import logging
import random
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

from .backends import Backend, Message
from .config import Settings, redact_url
from .events import (
    CONTENT_TYPE,
    DROPPED,
    OVERSIZED,
    TASK_TRANSITION,
    Event,
    Normalizer,
    Record,
    encode_many,
    safe_text,
)

logger = logging.getLogger("distributed.eventbus")

# How long closing waits for the publisher thread once its backend was aborted.
ABORT_WAIT = 5.0
# After the first error of a kind, repeats are summarised at most this often.
LOG_SUMMARY_INTERVAL = 60.0


class Histogram:
    """Bucket counts, as Prometheus histograms report them."""

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last bucket is +Inf
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value

    def observe_many(self, values: list[float]) -> None:
        counts, bounds = self.counts, self.bounds
        for value in values:
            counts[bisect.bisect_left(bounds, value)] += 1
        self.total += sum(values)

    def add(self, counts: list[int], total: float) -> None:
        self.counts = [a + b for a, b in zip(self.counts, counts, strict=True)]
        self.total += total

    def state(self) -> tuple[list[int], float]:
        return list(self.counts), self.total


PUBLISH_SECONDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
DELIVERY_SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


_transition_keys: dict[tuple[str, str], str] = {}


def _transition_routing_key(start: str, finish: str) -> str:
    routing_key = _transition_keys.get((start, finish))
    if routing_key is None:
        routing_key = _transition_keys[start, finish] = f"{TASK_TRANSITION}.{start}.{finish}"
    return routing_key


def build_messages(
    normalizer: Normalizer, records: list[Record], stats: DeliveryStats | None = None
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
                record[0],
                record[2],
                routing_key,
                CONTENT_TYPE,
                event.source,
            )
        )
    return messages


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


class DeliveryStats:
    """What a sink reports about delivery to the broker."""

    def __init__(self) -> None:
        self.published = 0
        self.retries = 0
        self.publish_errors = 0
        self.last_error: str | None = None
        self.last_publish_time: float | None = None
        self.connected = False
        """Whether the last attempt to publish succeeded."""
        self.oversized = 0
        """Events published as dask.eventbus.oversized in place of larger ones."""
        self.publish_seconds = Histogram(PUBLISH_SECONDS)
        """Duration of each successful ``backend.publish`` call."""
        self.delivery_seconds = Histogram(DELIVERY_SECONDS)
        """Per event: from the scheduler seeing it to the broker acknowledging it."""


class Sink(Protocol):
    """Where the pipeline thread hands batches of records."""

    @property
    def stats(self) -> DeliveryStats: ...

    def start(self) -> None: ...

    def send(self, records: list[Record]) -> bool:
        """Deliver or take charge of ``records``; False once closing ran out of time."""

    def in_flight(self) -> int:
        """Records handed over and not yet acknowledged by the broker."""

    def begin_close(self, deadline: float) -> None: ...

    def idle(self) -> None:
        """Called when the pipeline thread wakes with nothing to send."""

    def finish(self) -> int:
        """After the last send: wait (until the deadline) and release; returns undelivered."""


class Publisher:
    """Publishes batches through a backend, retrying with backoff until accepted."""

    def __init__(self, backend: Backend, normalizer: Normalizer, settings: Settings) -> None:
        self.backend = backend
        self.normalizer = normalizer
        self.initial_backoff = settings.retry.initial_backoff
        self.max_backoff = settings.retry.max_backoff
        self.max_events = settings.queue.max_events
        self._stats = DeliveryStats()
        self._closing = threading.Event()
        self._deadline = float("inf")
        self._opened = False
        self._failing_since: float | None = None
        self._last_failure_log = 0.0
        self._failures_since_log = 0
        self.on_failure: Callable[[], None] | None = None
        """Called after each failed attempt (the publisher process reports it)."""

    @property
    def stats(self) -> DeliveryStats:
        return self._stats

    def start(self) -> None:
        pass

    def in_flight(self) -> int:
        return 0

    def begin_close(self, deadline: float) -> None:
        self._deadline = deadline
        self._closing.set()

    def idle(self) -> None:
        pass

    def send(self, records: list[Record]) -> bool:
        return self.deliver(build_messages(self.normalizer, records, self._stats))

    def finish(self) -> int:
        self.close_backend()
        self._stats.connected = False
        return 0

    def close_backend(self) -> None:
        self._opened = False
        try:
            self.backend.close()
        except Exception:
            logger.debug("dask-eventbus: closing the backend failed", exc_info=True)

    def deliver(self, messages: list[Message]) -> bool:
        """Publish until the broker accepts; False if closing ran out of time."""
        stats, attempt = self._stats, 0
        while True:
            try:
                if not self._opened:
                    self.backend.open()
                    self._opened = True
                started = time.perf_counter()
                self.backend.send(messages)
                stats.publish_seconds.observe(time.perf_counter() - started)
            except Exception as exc:
                stats.connected = False
                self.close_backend()
                self._record_failure(exc)
                if self.on_failure is not None:
                    self.on_failure()
                attempt += 1
                delay = min(self.max_backoff, self.initial_backoff * 2 ** min(attempt - 1, 30))
                delay *= random.uniform(0.5, 1.0)
                remaining = self._deadline - time.monotonic()
                if remaining <= 0:
                    return False
                stats.retries += 1
                if self._closing.is_set():
                    time.sleep(min(delay, remaining))
                else:  # begin_close() cuts the backoff short to start flushing at once
                    self._closing.wait(delay)
                continue
            stats.connected = True
            stats.published += len(messages)
            stats.last_publish_time = now = time.time()
            stats.delivery_seconds.observe_many([now - m.time for m in messages])
            if self._failing_since is not None:
                logger.warning(
                    "dask-eventbus: publishing to %s works again after %.1fs and %d "
                    "failed attempts",
                    redact_url(self.backend.describe()),
                    time.monotonic() - self._failing_since,
                    attempt,
                )
                self._failing_since = None
            return True

    def _record_failure(self, exc: BaseException) -> None:
        self._stats.publish_errors += 1
        try:
            explanation = self.backend.explain(exc)
        except Exception:
            explanation = f"{type(exc).__name__}: {safe_text(exc)}"
        self._stats.last_error = error = redact_url(explanation)[:2000]
        now = time.monotonic()
        if self._failing_since is None:
            self._failing_since = now
            self._last_failure_log = now
            self._failures_since_log = 0
            logger.error(
                "dask-eventbus: cannot publish to %s: %s. Retrying with backoff; "
                "up to %d events are kept meanwhile (eventbus.queue.max-events).",
                redact_url(self.backend.describe()),
                error,
                self.max_events,
            )
            return
        self._failures_since_log += 1
        if now - self._last_failure_log >= LOG_SUMMARY_INTERVAL:
            logger.warning(
                "dask-eventbus: still cannot publish to %s after %.0fs (%d more failures): %s",
                redact_url(self.backend.describe()),
                now - self._failing_since,
                self._failures_since_log,
                error,
            )
            self._last_failure_log = now
            self._failures_since_log = 0


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
        self._last_drop_log = 0.0
        self._drops_since_log = 0

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
            unseen = self._buffer[0][0] - self._last_taken - 1
        except IndexError:
            unseen = 0
        return self.dropped + max(0, unseen)

    def stats(self) -> dict[str, Any]:
        delivery = self.sink.stats
        return {
            "backend": self.backend.name,
            "destination": redact_url(self.backend.describe()),
            "connected": delivery.connected,
            "queued": self.queued(),
            "published": delivery.published,
            "dropped": self.dropped_so_far(),
            "oversized": delivery.oversized,
            "retries": delivery.retries,
            "publish_errors": delivery.publish_errors,
            "last_error": delivery.last_error,
            "last_publish_time": delivery.last_publish_time,
            "undelivered": self.undelivered,
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
                    redact_url(self.backend.describe()),
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
                if len(lost) == 1 and lost[0][1] == DROPPED and lost[0][6] == "error":
                    self._pending = []  # not even the announcement goes out
                else:
                    self._pending = [self._lost_batch(lost)]
                continue
            self._pending = []

    def _take_batch(self) -> list[Record]:
        buffer, records = self._buffer, []
        popleft = buffer.popleft
        try:
            for _ in range(self.batch_size):
                record = popleft()
                if record[0] > self._last_taken + 1:
                    records.append(self._dropped_record(record[0] - 1))
                self._last_taken = record[0]
                records.append(record)
        except IndexError:
            pass
        if self._closing.is_set() and not buffer:
            final = self._final_sequence
            if final > self._last_taken:
                records.append(self._dropped_record(final))
                self._last_taken = final
        return records

    def _lost_batch(self, records: list[Record]) -> Record:
        """A dropped-event record standing for a batch that could not be sent."""
        logger.exception(
            "dask-eventbus: could not publish a batch of %d events; they are dropped and announced",
            len(records),
        )
        first, last = records[0][0], records[-1][0]
        count = len(records)
        self.dropped += count
        return (last, DROPPED, time.time(), count, first, last, "error")

    def _dropped_record(self, last: int) -> Record:
        first = self._last_taken + 1
        count = last - first + 1
        self.dropped += count
        self._log_drops(count)
        return (last, DROPPED, time.time(), count, first, last, self.policy)

    def _log_drops(self, count: int) -> None:
        now = time.monotonic()
        if self.dropped == count:
            self._last_drop_log = now
            logger.error(
                "dask-eventbus: the event queue was full (eventbus.queue.max-events=%d), "
                "%d events were dropped (%s). Dropped events are announced with %s "
                "events; raise max-events or fix the backend to stop this.",
                self.max_events,
                count,
                self.policy,
                DROPPED,
            )
            return
        self._drops_since_log += count
        if now - self._last_drop_log >= LOG_SUMMARY_INTERVAL:
            logger.warning(
                "dask-eventbus: %d more events dropped on a full queue in the last "
                "%.0fs (%d in all)",
                self._drops_since_log,
                now - self._last_drop_log,
                self.dropped,
            )
            self._last_drop_log = now
            self._drops_since_log = 0
