"""The report: its JSON summary, and the HTML page made from it."""

from __future__ import annotations

import math
import os
import statistics
from collections import Counter, defaultdict
from datetime import datetime, timezone
from typing import Any

from ..consume.state import ERRED
from .aggregate import SourceAggregate

MAX_GAP_RANGES = 100


def iso(timestamp: float | None) -> str | None:
    """Seconds since the epoch as an ISO 8601 UTC string."""
    if timestamp is None:
        return None
    return datetime.fromtimestamp(timestamp, timezone.utc).isoformat().replace("+00:00", "Z")


def percentile(ordered: list[float], fraction: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


class Report:
    """What a stream of events says happened; made by :func:`build_report`.

    :meth:`summary` gives the documented JSON structure, :meth:`write_html`
    the self-contained HTML page (it needs the ``report`` extra: Bokeh).
    """

    def __init__(
        self,
        aggregates: list[SourceAggregate],
        *,
        read: int,
        skipped: dict[str, int],
        outside_window: int,
    ) -> None:
        self.aggregates = aggregates
        self.read = read
        self.skipped = skipped
        self.outside_window = outside_window

    @property
    def sources(self) -> list[str]:
        """The sources (schedulers) the report covers, in the order first seen."""
        return [a.source for a in self.aggregates]

    def summary(self) -> dict[str, Any]:
        """The JSON summary (see the Reports page of the docs), as plain builtins."""
        return summarize(self.aggregates, self.input_counts())

    def input_counts(self) -> dict[str, Any]:
        """What was read and what was skipped, and why."""
        return {
            "read": self.read,
            "skipped": self.skipped,
            "outside_window": self.outside_window,
        }

    def to_html(self) -> str:
        """The report as one self-contained HTML page."""
        from .html import render

        return render(self)

    def write_html(self, path: str | os.PathLike[str]) -> None:
        """Write :meth:`to_html` to ``path``."""
        page = self.to_html()
        with open(path, "w", encoding="utf-8") as f:
            f.write(page)


def summarize(aggregates: list[SourceAggregate], input_counts: dict[str, Any]) -> dict[str, Any]:
    """The JSON summary of some sources' aggregates."""
    starts = [a.start for a in aggregates if a.start is not None]
    ends = [a.end for a in aggregates if a.end is not None]
    start, end = (min(starts), max(ends)) if starts else (None, None)
    return {
        "sources": [source_health(a) for a in aggregates],
        "input": input_counts,
        "start": iso(start),
        "end": iso(end),
        "duration_seconds": None if start is None or end is None else end - start,
        "tasks": task_counts(aggregates),
        "bytes": sum(task.nbytes for a in aggregates for task in a.tasks.values()),
        "action_seconds": action_seconds(aggregates),
        "prefixes": prefix_table(aggregates),
        "workers": [
            {
                "address": w.address,
                "name": w.name,
                "nthreads": w.nthreads,
                "added": iso(w.added),
                "removed": iso(w.removed),
                "reason": w.reason,
                "tasks": w.tasks,
                "compute_seconds": w.compute_seconds,
                "expected": w.expected,
                "processing_at_departure": w.processing,
                "processing_at_departure_total": w.processing_total,
                "lost_results": w.lost_total,
                "statuses": [
                    {"time": iso(t), "previous": previous, "status": status}
                    for t, previous, status in w.statuses
                ],
                "peak_memory": w.peak_memory,
                "source": a.source,
            }
            for a in aggregates
            for w in a.workers
        ],
        "spans": [
            {
                "span_id": n.span_id,
                "name": n.name,
                "parent_id": n.parent_id,
                "tasks": n.tasks,
                "source": a.source,
            }
            for a in aggregates
            for n in a.spans.values()
        ],
        "clients": sum(len(a.clients) for a in aggregates),
        "failures": [
            {
                "key": f.key,
                "prefix": f.prefix,
                "exception": f.exception,
                "cause": f.cause,
                "worker": f.worker,
                "time": iso(f.time),
                "source": a.source,
            }
            for a in aggregates
            for f in erred_failures(a)
        ],
        "graphs": [
            {
                "client": g.client,
                "time": iso(g.time),
                "tasks": g.tasks,
                "keys": g.keys,
                "prefixes": g.prefixes,
                "source": a.source,
            }
            for a in aggregates
            for g in a.graphs
        ],
    }


def action_seconds(aggregates: list[SourceAggregate]) -> dict[str, float]:
    """Seconds spent per timed action (compute, transfer, ...), largest first."""
    totals: dict[str, float] = defaultdict(float)
    for aggregate in aggregates:
        for action, seconds in aggregate.action_seconds.items():
            totals[action] += seconds
    return dict(sorted(totals.items(), key=lambda item: -item[1]))


def source_health(aggregate: SourceAggregate) -> dict[str, Any]:
    """One source's sequence accounting and the schedulers it was."""
    runs = aggregate.runs.values()
    gaps = [gap for run in runs for gap in run.unexplained_gaps()]
    firsts = [run.first for run in runs if run.first is not None]
    lasts = [run.last for run in runs if run.last is not None]
    return {
        "source": aggregate.source,
        "first_sequence": min(firsts) if firsts else None,
        "last_sequence": max(lasts) if lasts else None,
        "events": aggregate.events,
        "gaps": sum(last - first + 1 for first, last in gaps),
        "gap_ranges": [list(gap) for gap in gaps[:MAX_GAP_RANGES]],
        "dropped": aggregate.dropped,
        "oversized": sum(aggregate.oversized.values()),
        "duplicates": sum(run.duplicates for run in runs),
        "runs": len(aggregate.runs),
        "schedulers": [
            {
                "scheduler_id": scheduler_id,
                "address": info.get("address"),
                "versions": info.get("versions"),
                "started": iso(info.get("started")),
                "closing": iso(info.get("closing")),
            }
            for scheduler_id, info in aggregate.schedulers.items()
        ],
        "restarts": [iso(when) for when in aggregate.restarts],
    }


def task_counts(aggregates: list[SourceAggregate]) -> dict[str, Any]:
    """Tasks counted once per key: total, memory, erred, unfinished, final states."""
    total = memory = erred = unfinished = 0
    states: Counter[str] = Counter()
    for aggregate in aggregates:
        for task in aggregate.tasks.values():
            total += 1
            states[task.state] += 1
            if task.ever_memory:
                memory += 1
            if task.outcome == ERRED:
                erred += 1
            elif not task.ever_memory:
                unfinished += 1
    return {
        "total": total,
        "memory": memory,
        "erred": erred,
        "unfinished": unfinished,
        "final_states": dict(states.most_common()),
    }


def prefix_table(aggregates: list[SourceAggregate]) -> dict[str, dict[str, Any]]:
    """Per task prefix: counts and compute time, by total compute time (largest first)."""
    rows: dict[str, dict[str, Any]] = {}
    durations: dict[str, list[float]] = {}
    for aggregate in aggregates:
        for task in aggregate.tasks.values():
            row = rows.get(task.prefix)
            if row is None:
                row = rows[task.prefix] = {"tasks": 0, "memory": 0, "erred": 0, "nbytes_total": 0}
            row["tasks"] += 1
            row["memory"] += task.ever_memory
            row["erred"] += task.outcome == ERRED
            row["nbytes_total"] += task.nbytes
        for prefix, values in aggregate.compute.items():
            durations.setdefault(prefix, []).extend(values)
    for prefix, row in rows.items():
        ordered = sorted(durations.get(prefix, ()))
        row["computations"] = len(ordered)
        row["compute_seconds_total"] = math.fsum(ordered)
        row["compute_seconds_median"] = statistics.median(ordered) if ordered else None
        row["compute_seconds_p95"] = percentile(ordered, 0.95) if ordered else None
        row["compute_seconds_max"] = ordered[-1] if ordered else None
    return dict(sorted(rows.items(), key=lambda item: -item[1]["compute_seconds_total"]))


def erred_failures(aggregate: SourceAggregate) -> list[Any]:
    """Failures of the keys whose last outcome was an error, in the order they failed."""
    tasks = aggregate.tasks
    return [f for key, f in aggregate.failures.items() if tasks[key].outcome == ERRED]
