"""Feeding events into a report: decoding, checking, windowing, deduplicating."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable
from datetime import datetime

from ..consume.reader import EventReader, InputWarning
from ..events import Event
from .aggregate import SourceAggregate
from .result import Report

DEFAULT_STREAM_LIMIT = 50_000
"""Finished tasks the task stream draws at most (a random sample beyond)."""


class ReportInputWarning(InputWarning):
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
        self.reader = EventReader(
            source=source, since=since, until=until, warn=warn or _warn, consumer="the report"
        )
        self.stream_limit = stream_limit
        self.aggregates: dict[str, SourceAggregate] = {}

    @property
    def read(self) -> int:
        """Events (and undecodable inputs) read so far."""
        return self.reader.read

    def add_json(self, body: bytes | str) -> None:
        """Add one JSON Lines line or broker message (one event or a JSON array)."""
        for event in self.reader.events(body):
            self._fold(event)

    def add(self, event: Event) -> None:
        """Add one decoded event."""
        if self.reader.accept(event):
            self._fold(event)

    def _fold(self, event: Event) -> None:
        source = event.source
        aggregate = self.aggregates.get(source)
        if aggregate is None:
            aggregate = self.aggregates[source] = SourceAggregate(
                source, self.stream_limit, self.reader.sequences[source]
            )
        try:
            aggregate.add(event.type, event.data, event.time.timestamp())
        except (KeyError, TypeError, ValueError) as exc:
            self.reader.skip("not_cloudevent", f"a {event.type} event whose data lacks {exc}")

    def report(self) -> Report:
        """The report of everything added so far."""
        reader = self.reader
        if (
            reader.source is not None
            and reader.source not in self.aggregates
            and reader.other_sources
        ):
            raise ValueError(
                f"no events of source {reader.source!r} in the input; its sources are: "
                + ", ".join(sorted(reader.other_sources))
            )
        return Report(
            list(self.aggregates.values()),
            read=reader.read,
            skipped=dict(reader.skipped),
            outside_window=reader.outside_window,
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
    warnings.warn(message, ReportInputWarning, stacklevel=5)
