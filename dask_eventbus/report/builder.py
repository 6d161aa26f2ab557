"""Feeding events into a report: decoding, checking, windowing, deduplicating."""

from __future__ import annotations

import re
import warnings
from collections import Counter
from collections.abc import Callable, Iterable
from datetime import datetime, timezone

import msgspec

from ..backends import decode_body
from ..events import EVENT_TYPES, PROBE, Event
from .aggregate import SourceAggregate
from .result import Report

DEFAULT_STREAM_LIMIT = 50_000
"""Finished tasks the task stream draws at most (a random sample beyond)."""

SKIPPED_KINDS = {
    "not_json": "input that is not JSON",
    "not_cloudevent": "JSON values that are not dask-eventbus CloudEvents",
    "unknown_type": "events of a type this version of dask-eventbus does not know",
    "newer_version": "events of a newer schema version than this dask-eventbus reads",
}
"""What bad input is counted as, and how the warning names it."""

_KNOWN_TYPES = frozenset(EVENT_TYPES) - {PROBE}
_VERSIONED_TYPE = re.compile(r"\.v[0-9]+$")


class ReportInputWarning(UserWarning):
    """Input the report skipped; issued once per kind of bad input."""


class ReportBuilder:
    """Aggregates events one at a time into a :class:`Report`.

    ``source`` keeps only that scheduler's events; ``since`` and ``until``
    (aware datetimes, or naive ones taken as UTC) keep only events in that
    window. Bad input is counted and skipped with one warning per kind,
    given to ``warn`` (by default issued as a :class:`ReportInputWarning`).
    """

    def __init__(
        self,
        *,
        source: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        stream_limit: int = DEFAULT_STREAM_LIMIT,
        warn: Callable[[str], None] | None = None,
    ) -> None:
        self.source = source
        self.since = _timestamp(since)
        self.until = _timestamp(until)
        self.stream_limit = stream_limit
        self._warn = warn or _warn
        self.read = 0
        self.outside_window = 0
        self.skipped: Counter[str] = Counter()
        self.other_sources: Counter[str] = Counter()
        self.aggregates: dict[str, SourceAggregate] = {}

    def add_json(self, body: bytes | str) -> None:
        """Add one JSON Lines line or broker message (one event or a JSON array)."""
        try:
            events = decode_body(body.encode() if isinstance(body, str) else body)
        except msgspec.ValidationError as exc:
            self.read += 1
            self._skip("not_cloudevent", str(exc))
            return
        except msgspec.DecodeError as exc:
            self.read += 1
            self._skip("not_json", str(exc))
            return
        for event in events:
            self.add(event)

    def add(self, event: Event) -> None:
        """Add one decoded event."""
        self.read += 1
        type_ = event.type
        if type_ not in _KNOWN_TYPES:
            if type_ == PROBE:
                return
            kind = "newer_version" if _VERSIONED_TYPE.search(type_) else "unknown_type"
            self._skip(kind, type_)
            return
        if event.specversion != "1.0" or not event.sequence.isdigit():
            self._skip("not_cloudevent", f"specversion {event.specversion!r}")
            return
        when = event.time.timestamp()
        if (self.since is not None and when < self.since) or (
            self.until is not None and when > self.until
        ):
            self.outside_window += 1
            return
        source = event.source
        aggregate = self.aggregates.get(source)
        if aggregate is None:
            if self.source is not None and source != self.source:
                self.other_sources[source] += 1
                return
            aggregate = self.aggregates[source] = SourceAggregate(source, self.stream_limit)
        run = event.id.rpartition("-")[0]
        if aggregate.is_new(run, int(event.sequence)):
            try:
                aggregate.add(type_, event.data, when, run)
            except (KeyError, TypeError, ValueError) as exc:
                self._skip("not_cloudevent", f"a {type_} event whose data lacks {exc}")

    def _skip(self, kind: str, detail: str) -> None:
        self.skipped[kind] += 1
        if self.skipped[kind] == 1:
            self._warn(
                f"skipping {SKIPPED_KINDS[kind]} (the first: {detail[:200]}); "
                "the report counts every one skipped"
            )

    def report(self) -> Report:
        """The report of everything added so far."""
        if self.source is not None and self.source not in self.aggregates and self.other_sources:
            raise ValueError(
                f"no events of source {self.source!r} in the input; its sources are: "
                + ", ".join(sorted(self.other_sources))
            )
        return Report(
            list(self.aggregates.values()),
            read=self.read,
            skipped=dict(self.skipped),
            outside_window=self.outside_window,
        )


def build_report(
    events: Iterable[Event | bytes | str],
    *,
    source: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    stream_limit: int = DEFAULT_STREAM_LIMIT,
) -> Report:
    """A :class:`Report` of what happened on the cluster(s) these events describe.

    ``events`` are :class:`~dask_eventbus.Event` objects or their JSON (lines
    of a JSON Lines file, broker message bodies), read once. ``source`` keeps
    one scheduler's events; ``since``/``until`` a time window (naive datetimes
    are UTC). The task stream draws at most ``stream_limit`` finished tasks,
    a random sample of them beyond that, plus up to a tenth as many erred ones.
    Bad input is skipped and counted, with one :class:`ReportInputWarning` per
    kind.

    >>> from dask_eventbus.report import build_report
    >>> with open("dask-events.jsonl", "rb") as lines:  # doctest: +SKIP
    ...     report = build_report(lines)
    >>> report.summary()["tasks"]["erred"]  # doctest: +SKIP
    1
    >>> report.write_html("report.html")  # doctest: +SKIP
    """
    builder = ReportBuilder(source=source, since=since, until=until, stream_limit=stream_limit)
    for item in events:
        if isinstance(item, Event):
            builder.add(item)
        elif item.strip():
            builder.add_json(item)
    return builder.report()


def _warn(message: str) -> None:
    warnings.warn(message, ReportInputWarning, stacklevel=4)


def _timestamp(moment: datetime | None) -> float | None:
    if moment is None:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.timestamp()
