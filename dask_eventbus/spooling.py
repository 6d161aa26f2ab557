"""Publishing through the durable spool (``eventbus.spool.path`` set).

:class:`SpoolingPublisher` takes the place of the
:class:`~dask_eventbus.publisher.Publisher` (in the pipeline thread in
``thread`` mode, in the publisher process in ``process`` mode): it appends
each built batch of messages to the :class:`~dask_eventbus.spool.Spool` and
returns at once, so the in-memory queue does not fill while the spool has
room. Its drain thread delivers from the spool in order, with the
publisher's retry and backoff, and commits each batch the broker accepted.
A spool left by a crashed scheduler is delivered first, with its original
sources, ids and sequence numbers.

When the spool is full, :meth:`SpoolingPublisher.send` waits for room: the
queue in memory fills meanwhile, and the overflow policy applies there as it
does without a spool. Damage the spool's reader meets is announced with a
``dask.eventbus.dropped`` event (policy ``spool-corrupt``) in the damaged
events' source, taking the last lost sequence number.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from .backends.contract import Backend, Message
from .config import Settings, SpoolSettings
from .messages import build_messages, loss_announcement
from .normalize import Normalizer
from .pacing import RateLimitedLog
from .publisher import Publisher
from .records import Record
from .stats import DeliveryStats

if TYPE_CHECKING:
    # Imported where a spool is configured: the publisher process of a
    # scheduler without one does not pay for the file format and its lock.
    from .spool import Damage, Spool

logger = logging.getLogger("distributed.eventbus")

CORRUPT_POLICY = "spool-corrupt"
# How long a new owner waits for the spool's lock: a publisher process of a
# crashed scheduler may still be closing.
LOCK_WAIT = 15.0
# How long closing waits for the drain thread past the deadline, before and
# after aborting the backend call it is in: within the pipeline's margin of a
# second for a last backend call.
DRAIN_GRACE = 0.4


def open_spool(settings: SpoolSettings, lock_wait: float = LOCK_WAIT) -> Spool:
    """The spool ``settings`` describe, locked for this process."""
    from .spool import Spool

    assert settings.path is not None
    return Spool(
        settings.path,
        max_bytes=settings.max_bytes,
        segment_bytes=settings.segment_bytes,
        sync_interval=settings.sync_interval,
        lock_wait=lock_wait,
    )


def check_spool(settings: Settings) -> None:
    """Fail now, with a :class:`~dask_eventbus.config.ConfigError`, if the
    configured spool belongs to another running scheduler."""
    if settings.spool.path is not None:
        from .spool import check_free

        check_free(settings.spool.path, LOCK_WAIT)


def announcement(damage: Damage) -> Message | None:
    """The ``dask.eventbus.dropped`` message for damage of known range."""
    if damage.source is None or damage.run is None or damage.first is None or damage.last is None:
        return None
    normalizer = Normalizer(damage.source, damage.run)
    return loss_announcement(normalizer, damage.first, damage.last, CORRUPT_POLICY)


class SpoolingPublisher(Publisher):
    """A publisher whose batches go to disk first and to the broker from there."""

    def __init__(self, backend: Backend, normalizer: Normalizer, settings: Settings) -> None:
        super().__init__(backend, normalizer, settings)
        self.spool = open_spool(settings.spool)
        self._drain: threading.Thread | None = None
        self._drained = threading.Event()
        self._full_log = RateLimitedLog()
        self._refresh_stats()

    def _refresh_stats(self) -> None:
        self._stats.spool = self.spool.snapshot()

    @property
    def stats(self) -> DeliveryStats:
        self._refresh_stats()
        return self._stats

    def start(self) -> None:
        if self._drain is None:
            self._drain = threading.Thread(
                target=self._run_drain, name="dask-eventbus-spool-drain", daemon=True
            )
            self._drain.start()

    def in_flight(self) -> int:
        return self.spool.events

    def send(self, records: Sequence[Record]) -> bool:
        return self.store(build_messages(self.normalizer, records, self._stats))

    def store(self, messages: list[Message]) -> bool:
        """Append to the spool, waiting while it is full; False past the closing deadline."""
        self.start()
        while not self.spool.append(messages):
            if self._full_log.occurred():
                logger.error(
                    "dask-eventbus: the spool %s is full (eventbus.spool.max-bytes=%d); "
                    "events wait in memory (eventbus.queue.max-events) meanwhile",
                    self.spool.path,
                    self.spool.max_bytes,
                )
                self._full_log.logged()
            if time.monotonic() >= self._deadline:
                return False
            self.spool.wait_for_room(0.1)
        self._full_log.ended()
        return True

    def finish(self) -> int:
        self.start()
        self._drained.clear()  # set again once what was stored last is delivered
        self._drained.wait(max(0.0, self._deadline - time.monotonic()))
        self._deadline = min(self._deadline, time.monotonic())
        self._closing.set()
        assert self._drain is not None
        self._drain.join(DRAIN_GRACE)
        if self._drain.is_alive():  # inside a backend call that outlasts the deadline
            self.backend.abort()
            self._drain.join(DRAIN_GRACE)
        self.spool.close()
        self._refresh_stats()
        left = self.spool.events
        if left:
            logger.warning(
                "dask-eventbus: %d events stay in the spool %s; a scheduler started with "
                "the same eventbus.spool.path delivers them first",
                left,
                self.spool.path,
            )
        super().finish()
        return 0

    def _run_drain(self) -> None:
        try:
            self._drain_loop()
        except Exception:  # a bug here must not end delivery silently
            logger.exception("dask-eventbus: the spool's drain thread failed")

    def _drain_loop(self) -> None:
        spool = self.spool
        while True:
            if self._closing.is_set() and time.monotonic() >= self._deadline:
                return
            batch = spool.read()
            if batch is None:
                if self._closing.is_set():
                    self._drained.set()
                    if time.monotonic() >= self._deadline:
                        return
                spool.wait_for_room(0.05)
                continue
            announced = []
            for damage in batch.damage:
                message = announcement(damage)
                logger.error(
                    "dask-eventbus: the spool %s had damaged data (%d parts, %d bytes); "
                    "moved to its quarantine directory, %s",
                    spool.path,
                    damage.parts,
                    damage.nbytes,
                    f"announced as sequence {damage.first}-{damage.last} of {damage.source} lost"
                    if message is not None
                    else "not announced: which events it held is unknown",
                )
                if message is not None:
                    announced.append(message)
            messages = announced + batch.messages
            if messages and not self.deliver(messages):
                return
            spool.commit(batch)
