"""The bounded buffer and the publisher thread between scheduler hooks and a backend.

Hooks call :attr:`Pipeline.capture` with a record whose first item is a
sequence number from :attr:`Pipeline.next_sequence`. Capturing is a deque
append: O(1), no lock, no I/O. When the buffer is full the overflow policy
drops either the oldest records (``deque(maxlen)`` evicts them) or the new one.
Drops are not counted on the hot path: the publisher sees them as gaps in the
sequence numbers it takes out, and announces each gap with a
``dask.eventbus.dropped`` event that takes the gap's last sequence number.

The publisher thread wakes when a batch is full or the flush interval passed,
normalizes and encodes the batch once, and publishes it. A failed publish
keeps the batch, closes the backend, backs off exponentially with jitter,
reopens and publishes it again: at-least-once delivery, in order.
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
from typing import Any

from .backends import Backend, Message
from .config import Settings, redact_url
from .events import DROPPED, TASK_TRANSITION, Normalizer, Record, encode_many, safe_text

logger = logging.getLogger("distributed.eventbus")

# After the first error of a kind, repeats are summarised at most this often.
LOG_SUMMARY_INTERVAL = 60.0


class Histogram:
    """Cumulative bucket counts, as Prometheus histograms report them."""

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


PUBLISH_SECONDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
DELIVERY_SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


def build_messages(normalizer: Normalizer, records: list[Record]) -> list[Message]:
    """Normalize and encode records into what backends publish."""
    events = [normalizer.event(record) for record in records]
    messages = []
    for record, event, body in zip(records, events, encode_many(events), strict=True):
        routing_key = event.type
        if routing_key == TASK_TRANSITION:
            routing_key = f"{routing_key}.{event.data.start}.{event.data.finish}"
        messages.append(
            Message(body, event.id, event.type, event.subject, record[0], record[2], routing_key)
        )
    return messages


class Pipeline:
    """Buffer, publisher thread and delivery accounting for one plugin."""

    def __init__(self, backend: Backend, normalizer: Normalizer, settings: Settings) -> None:
        self.backend = backend
        self.normalizer = normalizer
        queue = settings.queue
        self.max_events = queue.max_events
        self.batch_size = queue.batch_size
        self.flush_interval = queue.flush_interval
        self.policy = queue.overflow
        self.initial_backoff = settings.retry.initial_backoff
        self.max_backoff = settings.retry.max_backoff
        self.close_timeout = settings.close_timeout

        self._counter = itertools.count(1)
        self.next_sequence: Callable[[], int] = self._counter.__next__
        self._wake = threading.Event()
        self._closing = threading.Event()
        if self.policy == "drop-oldest":
            self._buffer: deque[Record] = deque(maxlen=self.max_events)
        else:
            self._buffer = deque()
        self.capture: Callable[[Record], None] = self._capture_function()
        self._thread: threading.Thread | None = None
        self._pending: list[Message] = []
        self._last_taken = 0
        self._final_sequence = 0
        self._deadline = float("inf")

        self.published = 0
        self.dropped = 0
        self.retries = 0
        self.publish_errors = 0
        self.last_error: str | None = None
        self.last_publish_time: float | None = None
        self.connected = False
        """Whether the last attempt to publish succeeded."""
        self._opened = False
        self.undelivered = 0
        self.publish_seconds = Histogram(PUBLISH_SECONDS)
        """Duration of each successful ``backend.publish`` call."""
        self.delivery_seconds = Histogram(DELIVERY_SECONDS)
        """Per event: from the scheduler seeing it to the broker acknowledging it."""
        self._failing_since: float | None = None
        self._last_failure_log = 0.0
        self._failures_since_log = 0
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

            def capture(record: Record) -> None:
                size = len(buffer)
                if size < max_events:
                    append(record)
                    if size + 1 == batch_size:
                        wake()

        return capture

    # ------------------------------------------------------------ lifecycle

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self._run, name=f"dask-eventbus-{self.backend.name}", daemon=True
        )
        self._thread.start()

    def close(self) -> None:
        """Deliver what is left within ``close-timeout``. Blocks.

        Callers stop calling :attr:`capture` first: what is captured later is
        neither delivered nor counted.
        """
        self._final_sequence = self.next_sequence() - 1
        self._deadline = time.monotonic() + self.close_timeout
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
        else:
            self.undelivered = len(self._buffer)

    # ------------------------------------------------------------ statistics

    def queued(self) -> int:
        return len(self._buffer) + len(self._pending)

    def stats(self) -> dict[str, Any]:
        return {
            "backend": self.backend.name,
            "destination": redact_url(self.backend.describe()),
            "connected": self.connected,
            "queued": self.queued(),
            "published": self.published,
            "dropped": self.dropped,
            "retries": self.retries,
            "publish_errors": self.publish_errors,
            "last_error": self.last_error,
            "last_publish_time": self.last_publish_time,
            "undelivered": self.undelivered,
        }

    # ------------------------------------------------------------ publisher thread

    def _run(self) -> None:
        try:
            self._publish_loop()
        except Exception:  # a bug here must not take the scheduler down with it
            logger.exception("dask-eventbus publisher thread failed")
        finally:
            self.undelivered = self.queued()
            if self.undelivered:
                logger.warning(
                    "dask-eventbus: closed with %d events undelivered to %s",
                    self.undelivered,
                    redact_url(self.backend.describe()),
                )
            self._close_backend()
            self.connected = False

    def _close_backend(self) -> None:
        self._opened = False
        try:
            self.backend.close()
        except Exception:
            logger.debug("dask-eventbus: closing the backend failed", exc_info=True)

    def _publish_loop(self) -> None:
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
                    continue
            if not self._deliver(self._pending):
                return
            self._pending = []

    def _take_batch(self) -> list[Message]:
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
        return build_messages(self.normalizer, records)

    def _dropped_record(self, last: int) -> Record:
        first = self._last_taken + 1
        count = last - first + 1
        self.dropped += count
        self._log_drops(count)
        return (last, DROPPED, time.time(), count, first, last, self.policy)

    def _deliver(self, messages: list[Message]) -> bool:
        """Publish until the broker accepts; False if closing ran out of time."""
        attempt = 0
        while True:
            try:
                if not self._opened:
                    self.backend.open()
                    self._opened = True
                started = time.perf_counter()
                self.backend.publish(messages)
                self.publish_seconds.observe(time.perf_counter() - started)
            except Exception as exc:
                self.connected = False
                self._close_backend()
                self._record_failure(exc)
                attempt += 1
                delay = min(self.max_backoff, self.initial_backoff * 2 ** min(attempt - 1, 30))
                delay *= random.uniform(0.5, 1.0)
                remaining = self._deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self.retries += 1
                if self._closing.is_set():
                    time.sleep(min(delay, remaining))
                else:  # close() cuts the backoff short to start flushing at once
                    self._closing.wait(delay)
                continue
            self.connected = True
            self.published += len(messages)
            self.last_publish_time = now = time.time()
            self.delivery_seconds.observe_many([now - m.time for m in messages])
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

    # ------------------------------------------------------------ logging

    def _record_failure(self, exc: BaseException) -> None:
        self.publish_errors += 1
        try:
            explanation = self.backend.explain(exc)
        except Exception:
            explanation = f"{type(exc).__name__}: {safe_text(exc)}"
        self.last_error = redact_url(explanation)[:2000]
        now = time.monotonic()
        if self._failing_since is None:
            self._failing_since = now
            self._last_failure_log = now
            self._failures_since_log = 0
            logger.error(
                "dask-eventbus: cannot publish to %s: %s. Retrying with backoff; "
                "up to %d events are kept meanwhile (eventbus.queue.max-events).",
                redact_url(self.backend.describe()),
                self.last_error,
                self.max_events,
            )
            return
        self._failures_since_log += 1
        if now - self._last_failure_log >= LOG_SUMMARY_INTERVAL:
            logger.warning(
                "dask-eventbus: still cannot publish to %s after %.0fs (%d more "
                "failures, %d events queued): %s",
                redact_url(self.backend.describe()),
                now - self._failing_since,
                self._failures_since_log,
                self.queued(),
                self.last_error,
            )
            self._last_failure_log = now
            self._failures_since_log = 0

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
