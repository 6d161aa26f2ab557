"""The questions ``dask-eventbus history`` answers across runs and clusters.

Each takes the same window (``since``/``until``, seconds since the epoch)
and an optional source, and gives JSON-ready rows. Times in rows are
ISO 8601 UTC strings.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from typing import Any

from .database import Database

QUESTIONS: dict[str, str] = {
    "runs": "scheduler runs: when, how they ended, tasks, erred, workers",
    "failures": "tasks whose last outcome was an error: exception and cause",
    "prefixes": "per task prefix: tasks, in memory, erred, compute seconds",
    "workers": "workers that joined or left: when, why, what they were running",
}


def iso(timestamp: float | None) -> str | None:
    """Seconds since the epoch as an ISO 8601 UTC string."""
    if timestamp is None:
        return None
    return datetime.fromtimestamp(timestamp, timezone.utc).isoformat().replace("+00:00", "Z")


def _window(
    column: str, since: float | None, until: float | None, source: str | None, alias: str
) -> tuple[str, list[Any]]:
    clauses: list[str] = []
    params: list[Any] = []
    if since is not None:
        clauses.append(f"{column} >= ?")
        params.append(since)
    if until is not None:
        clauses.append(f"{column} <= ?")
        params.append(until)
    if source is not None:
        clauses.append(f"{alias}.source = ?")
        params.append(source)
    return (" AND ".join(clauses) or "TRUE"), params


def runs(
    database: Database, since: float | None, until: float | None, source: str | None, limit: int
) -> list[dict[str, Any]]:
    """Scheduler runs that started (or first sent events) in the window, newest first."""
    where, params = _window("COALESCE(s.started, s.first_event)", since, until, source, "s")
    rows = database.execute(
        f"""
        SELECT s.source, s.run, s.address, COALESCE(s.started, s.first_event),
               COALESCE(s.closed, s.crashed, s.last_event),
               CASE WHEN s.closed IS NOT NULL THEN 'closed'
                    WHEN s.crashed IS NOT NULL THEN 'crashed' ELSE 'running' END,
               (SELECT COUNT(*) FROM tasks t WHERE t.source = s.source AND t.run = s.run),
               (SELECT COUNT(*) FROM tasks t WHERE t.source = s.source AND t.run = s.run
                    AND t.outcome = 'erred'),
               (SELECT COUNT(DISTINCT w.address) FROM workers w
                    WHERE w.source = s.source AND w.run = s.run),
               s.events
        FROM schedulers s WHERE {where}
        ORDER BY COALESCE(s.started, s.first_event) DESC LIMIT {int(limit)}
        """,
        params,
    )
    names = ("source", "run", "address", "started", "ended", "ending", "tasks", "erred")
    return [
        {
            **dict(zip(names, row[:8], strict=True)),
            "started": iso(row[3]),
            "ended": iso(row[4]),
            "workers": row[8],
            "events": row[9],
        }
        for row in rows
    ]


def failures(
    database: Database, since: float | None, until: float | None, source: str | None, limit: int
) -> list[dict[str, Any]]:
    """Tasks whose last outcome was an error, in the window, newest first."""
    where, params = _window("t.finished", since, until, source, "t")
    rows = database.execute(
        f"""
        SELECT t.source, t.run, t.key, t.prefix, t.exception, t.finished, t.cause, t.worker
        FROM tasks t WHERE t.outcome = 'erred' AND {where}
        ORDER BY t.finished DESC LIMIT {int(limit)}
        """,
        params,
    )
    names = ("source", "run", "key", "prefix", "exception", "time", "cause", "worker")
    return [{**dict(zip(names, row, strict=True)), "time": iso(row[5])} for row in rows]


def prefixes(
    database: Database, since: float | None, until: float | None, source: str | None, limit: int
) -> list[dict[str, Any]]:
    """Per task prefix over tasks submitted in the window, most compute first."""
    where, params = _window("t.submitted", since, until, source, "t")
    rows = database.execute(
        f"""
        SELECT t.prefix, COUNT(*),
               SUM(CASE WHEN t.outcome = 'memory' THEN 1 ELSE 0 END),
               SUM(CASE WHEN t.outcome = 'erred' THEN 1 ELSE 0 END),
               COALESCE(SUM(t.compute_seconds), 0),
               COUNT(DISTINCT t.source)
        FROM tasks t WHERE {where}
        GROUP BY t.prefix ORDER BY 5 DESC LIMIT {int(limit)}
        """,
        params,
    )
    names = ("prefix", "tasks", "memory", "erred", "compute_seconds", "sources")
    return [dict(zip(names, row, strict=True)) for row in rows]


def workers(
    database: Database, since: float | None, until: float | None, source: str | None, limit: int
) -> list[dict[str, Any]]:
    """Worker spells that joined or left in the window, latest first."""
    where, params = _window("COALESCE(w.departed, w.joined)", since, until, source, "w")
    rows = database.execute(
        f"""
        SELECT w.source, w.address, w.name, w.joined, w.departed, w.reason, w.expected,
               w.processing_total, w.processing, w.status
        FROM workers w WHERE {where}
        ORDER BY COALESCE(w.departed, w.joined) DESC LIMIT {int(limit)}
        """,
        params,
    )
    return [
        {
            "source": row[0],
            "address": row[1],
            "name": row[2],
            "joined": iso(row[3]),
            "left": iso(row[4]),
            "reason": row[5],
            "expected": None if row[6] is None else bool(row[6]),
            "processing_total": row[7],
            "processing": json.loads(row[8]) if row[8] else [],
            "status": row[9],
        }
        for row in rows
    ]


ANSWERS: dict[str, Callable[..., list[dict[str, Any]]]] = {
    "runs": runs,
    "failures": failures,
    "prefixes": prefixes,
    "workers": workers,
}


class HistoryInput:
    """The archived events as a consumer input, run by run in sequence order.

    Read by the report like a file: ``read`` gives bodies until ``None``.
    """

    resumable = False
    position = None

    def __init__(
        self,
        url: str,
        *,
        since: datetime | None = None,
        until: datetime | None = None,
        source: str | None = None,
    ) -> None:
        from .database import connect

        self._database = connect(url, migrate=False)
        self._events = stored_events(
            self._database,
            since.timestamp() if since else None,
            until.timestamp() if until else None,
            source,
        )

    def read(self, limit: int, timeout: float | None = None) -> list[bytes] | None:
        bodies = [body.encode() for body in itertools.islice(self._events, limit)]
        return bodies or None

    def commit(self) -> None:
        """Nothing to acknowledge: the database keeps its events."""

    def close(self) -> None:
        self._database.close()


def stored_events(
    database: Database, since: float | None, until: float | None, source: str | None
) -> Iterator[str]:
    """The archived events' JSON, run by run in sequence order."""
    where, params = _window("e.time", since, until, source, "e")
    last: tuple[str, str, int] = ("", "", -1)
    while True:
        # Pages by key, so memory stays flat and the order is the index's.
        rows = database.execute(
            f"""
            SELECT e.source, e.run, e.sequence, e.body FROM events e
            WHERE {where} AND (e.source, e.run, e.sequence) > (?, ?, ?)
            ORDER BY e.source, e.run, e.sequence LIMIT 10000
            """,
            [*params, *last],
        )
        if not rows:
            return
        for row in rows:
            yield row[3]
        last = (rows[-1][0], rows[-1][1], rows[-1][2])
