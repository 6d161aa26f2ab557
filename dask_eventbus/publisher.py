"""The publisher: hands batches to a backend until the broker accepted them.

A failed publish keeps the batch, closes the backend, backs off
exponentially with jitter, reopens and publishes it again: at-least-once
delivery, in order. The pipeline thread drives it in ``thread`` mode; the
publisher process runs the same class in ``process`` mode (see
``process/``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Protocol

from .backends.contract import Backend, Message, Refused
from .config import Settings, redact_url
from .events import DROPPED, safe_text
from .messages import build_messages, loss_announcement
from .normalize import Normalizer
from .pacing import Backoff, RateLimitedLog
from .records import Record
from .stats import DeliveryStats

logger = logging.getLogger("distributed.eventbus")

# The longest wait a backend's ``retry_after`` (an HTTP Retry-After) imposes.
MAX_RETRY_AFTER = 300.0


class Sink(Protocol):
    """Where the pipeline thread hands batches of records."""

    @property
    def stats(self) -> DeliveryStats: ...

    def start(self) -> None: ...

    def send(self, records: Sequence[Record]) -> bool:
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
        self._backoff = Backoff(settings.retry.initial_backoff, settings.retry.max_backoff)
        self.max_events = settings.queue.max_events
        self._stats = DeliveryStats()
        self._closing = threading.Event()
        self._deadline = float("inf")
        self._opened = False
        self._failing = RateLimitedLog()
        self._refusals = RateLimitedLog()
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

    def send(self, records: Sequence[Record]) -> bool:
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
        stats = self._stats
        while True:
            refusal = None
            try:
                if not self._opened:
                    self.backend.open()
                    self._opened = True
                started = time.perf_counter()
                try:
                    self.backend.send(messages)
                except Refused as refused:
                    refusal = refused
                stats.publish_seconds.observe(time.perf_counter() - started)
            except Exception as exc:
                stats.connected = False
                self.close_backend()
                self._record_failure(exc)
                if self.on_failure is not None:
                    self.on_failure()
                delay = self._backoff.next_delay()
                wanted = getattr(exc, "retry_after", None)
                if isinstance(wanted, (int, float)):
                    delay = max(delay, min(float(wanted), MAX_RETRY_AFTER))
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
            delivered = messages
            if refusal is not None:
                refused_ids = {m.id for m in refusal.messages}
                delivered = [m for m in messages if m.id not in refused_ids]
            stats.published += len(delivered)
            stats.last_publish_time = now = time.time()
            stats.delivery_seconds.observe_many([now - m.time for m in delivered])
            attempts, lasted = self._backoff.failures, self._failing.ended()
            self._backoff.reset()
            if lasted is not None:
                logger.warning(
                    "dask-eventbus: publishing to %s works again after %.1fs and %d "
                    "failed attempts",
                    self.backend.destination(),
                    lasted,
                    attempts,
                )
            if refusal is not None:
                return self._refused(refusal)
            return True

    def _refused(self, refusal: Refused) -> bool:
        """Count, log and announce events the broker refused for good; False
        if closing ran out of time for the announcement."""
        refused = sorted(refusal.messages, key=lambda m: m.sequence)
        self._stats.refused += len(refused)
        reason = redact_url(self.backend.mask(refusal.reason))[:2000]
        if self._refusals.occurred():
            unlogged = self._refusals.logged()
            logger.error(
                "dask-eventbus: %s refused %d events for good (%s); they are not retried "
                "but announced with %s events (policy refused)%s",
                self.backend.destination(),
                len(refused),
                reason,
                DROPPED,
                f"; {unlogged} more refusals since the last report" if unlogged else "",
            )
        # One announcement per run of consecutive sequence numbers of one
        # source, each taking the run's last number as gap announcements do.
        # Refused announcements are counted and logged only.
        runs: list[tuple[str, str, int, int]] = []
        for message in refused:
            if message.type == DROPPED:
                continue
            run_id = message.id.rsplit("-", 1)[0]
            if runs and runs[-1][:2] == (message.source, run_id):
                source, run, first, last = runs[-1]
                if message.sequence == last + 1:
                    runs[-1] = (source, run, first, message.sequence)
                    continue
            runs.append((message.source, run_id, message.sequence, message.sequence))
        announcements: list[Message] = []
        for source, run_id, first, last in runs:
            # A spool left by an earlier scheduler holds its events: their
            # announcement belongs to that scheduler's source and run.
            normalizer = self.normalizer
            if (source, run_id) != (normalizer.source, normalizer.run_id):
                normalizer = Normalizer(source, run_id)
            announcements.append(loss_announcement(normalizer, first, last, "refused", self._stats))
        return not announcements or self.deliver(announcements)

    def _record_failure(self, exc: BaseException) -> None:
        self._stats.publish_errors += 1
        try:
            explanation = self.backend.explain(exc)
        except Exception:
            explanation = f"{type(exc).__name__}: {safe_text(exc)}"
        self._stats.last_error = error = redact_url(explanation)[:2000]
        if not self._failing.occurred():
            return
        if self._failing.last_logged == self._failing.since:
            logger.error(
                "dask-eventbus: cannot publish to %s: %s. Retrying with backoff; "
                "up to %d events are kept meanwhile (eventbus.queue.max-events).",
                self.backend.destination(),
                error,
                self.max_events,
            )
        else:
            logger.warning(
                "dask-eventbus: still cannot publish to %s after %.0fs (%d more failures): %s",
                self.backend.destination(),
                time.monotonic() - (self._failing.since or 0.0),
                self._failing.unlogged + 1,
                error,
            )
        self._failing.logged()


def make_publisher(backend: Backend, normalizer: Normalizer, settings: Settings) -> Publisher:
    """A :class:`~dask_eventbus.spooling.SpoolingPublisher` if a spool is
    configured, else a plain one."""
    if settings.spool.path is None:
        return Publisher(backend, normalizer, settings)
    # Imported only then: a publisher process without a spool need not load it.
    from .spooling import SpoolingPublisher

    return SpoolingPublisher(backend, normalizer, settings)
