"""Turning message bodies into the events a consumer should act on.

Every consumer (the report, the archive) reads through one
:class:`EventReader`: it decodes structured and batched messages, counts
and skips bad input with one warning per kind, keeps a time window and a
source, and drops redeliveries by their sequence numbers, remembering the
gaps per plugin run.
"""

from __future__ import annotations

import re
import warnings
from collections import Counter
from collections.abc import Callable
from datetime import datetime, timezone

import msgspec

from ..backends import decode_body
from ..events import DROPPED, EVENT_TYPES, PROBE, Event
from .sequence import SequenceTracker

SKIPPED_KINDS = {
    "not_json": "input that is not JSON",
    "not_cloudevent": "JSON values that are not dask-eventbus CloudEvents",
    "unknown_type": "events of a type this version of dask-eventbus does not know",
    "newer_version": "events of a newer schema version than this dask-eventbus reads",
}
"""What bad input is counted as, and how the warning names it."""

_KNOWN_TYPES = frozenset(EVENT_TYPES) - {PROBE}
_VERSIONED_TYPE = re.compile(r"\.v[0-9]+$")


class InputWarning(UserWarning):
    """Input a consumer skipped; issued once per kind of bad input."""


class EventReader:
    """Decodes, checks and deduplicates events, one message body at a time.

    ``source`` keeps only that scheduler's events; ``since`` and ``until``
    (aware datetimes, or naive ones taken as UTC) keep only events in that
    window. Bad input is counted in :attr:`skipped` and skipped with one
    warning per kind, given to ``warn`` (by default issued as an
    :class:`InputWarning`). :attr:`sequences` holds, per source and plugin
    run, the sequence numbers seen: a consumer that stores them can restore
    them and read the same input again without acting twice.
    """

    def __init__(
        self,
        *,
        source: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        warn: Callable[[str], None] | None = None,
        consumer: str = "the consumer",
    ) -> None:
        self.source = source
        self.since = _timestamp(since)
        self.until = _timestamp(until)
        self._warn = warn or _warn
        self._consumer = consumer
        self.read = 0
        self.outside_window = 0
        self.skipped: Counter[str] = Counter()
        self.other_sources: Counter[str] = Counter()
        self.sequences: dict[str, dict[str, SequenceTracker]] = {}

    def events(
        self, body: bytes | str, refolded: Callable[[Event], bool] | None = None
    ) -> list[Event]:
        """The new events in one JSON Lines line or broker message.

        ``refolded`` names events to give even when their sequence number was
        seen before (counted as read all the same).
        """
        try:
            decoded = decode_body(body.encode() if isinstance(body, str) else body)
        except msgspec.ValidationError as exc:
            self.read += 1
            self.skip("not_cloudevent", str(exc))
            return []
        except msgspec.DecodeError as exc:
            self.read += 1
            self.skip("not_json", str(exc))
            return []
        return [
            event
            for event in decoded
            if self.accept(event)
            or (refolded is not None and event.source in self.sequences and refolded(event))
        ]

    def accept(self, event: Event) -> bool:
        """Whether a decoded event is new, known and wanted; counts it either way."""
        self.read += 1
        type_ = event.type
        if type_ not in _KNOWN_TYPES:
            if type_ != PROBE:
                kind = "newer_version" if _VERSIONED_TYPE.search(type_) else "unknown_type"
                self.skip(kind, type_)
            return False
        if event.specversion != "1.0" or not event.sequence.isdigit():
            self.skip("not_cloudevent", f"specversion {event.specversion!r}")
            return False
        if self.since is not None or self.until is not None:
            when = event.time.timestamp()
            if (self.since is not None and when < self.since) or (
                self.until is not None and when > self.until
            ):
                self.outside_window += 1
                return False
        source = event.source
        runs = self.sequences.get(source)
        if runs is None:
            if self.source is not None and source != self.source:
                self.other_sources[source] += 1
                return False
            runs = self.sequences[source] = {}
        run = run_of(event)
        tracker = runs.get(run)
        if tracker is None:
            tracker = runs[run] = SequenceTracker()
        if not tracker.is_new(int(event.sequence)):
            return False
        if type_ == DROPPED and isinstance(event.data, dict):
            first, last = event.data.get("first_sequence"), event.data.get("last_sequence")
            if isinstance(first, int) and isinstance(last, int):
                tracker.announce_dropped(first, last)
        return True

    def skip(self, kind: str, detail: str) -> None:
        """Count one piece of bad input of ``kind`` (a key of SKIPPED_KINDS)."""
        self.skipped[kind] += 1
        if self.skipped[kind] == 1:
            self._warn(
                f"skipping {SKIPPED_KINDS[kind]} (the first: {detail[:200]}); "
                f"{self._consumer} counts every one skipped"
            )


def run_of(event: Event) -> str:
    """The plugin run an event comes from: its id without the sequence number."""
    return event.id.rpartition("-")[0]


def _warn(message: str) -> None:
    warnings.warn(message, InputWarning, stacklevel=4)


def _timestamp(moment: datetime | None) -> float | None:
    if moment is None:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.timestamp()
