"""The Summary tab: run, tasks, cluster and the event bus's health."""

from __future__ import annotations

from html import escape
from typing import TYPE_CHECKING, Any

from dask.utils import format_bytes, format_time

from ..aggregate import SourceAggregate
from .common import div, input_rows, iso_text, rows

if TYPE_CHECKING:
    from bokeh.models import UIElement


def summary_tab(aggregate: SourceAggregate, summary: dict[str, Any]) -> UIElement:
    """The Summary tab, laid out as Dask's performance report lays out its own."""
    health = summary["sources"][0]
    tasks = summary["tasks"]
    duration = summary["duration_seconds"] or 0.0
    threads = sum(w.nthreads or 0 for w in aggregate.workers)
    left = sum(1 for w in aggregate.workers if w.removed is not None)
    parts = [
        "<h1>Dask cluster report</h1>",
        f"<i>{escape(aggregate.source)}: select the tabs above for more.</i>",
        f"<h2>Duration: {format_time(duration)}</h2>",
        rows(
            [
                ("Start", iso_text(summary["start"])),
                ("End", iso_text(summary["end"])),
            ]
        ),
        "<h2>Tasks</h2>",
        rows(
            [
                ("Tasks (distinct keys)", f"{tasks['total']:,}"),
                ("Reached memory", f"{tasks['memory']:,}"),
                (
                    "Erred",
                    f"<span class='{'bad' if tasks['erred'] else 'ok'}'>{tasks['erred']:,}</span>",
                ),
                ("Unfinished", f"{tasks['unfinished']:,}"),
                (
                    "Final scheduler states",
                    ", ".join(f"{escape(s)}: {n:,}" for s, n in tasks["final_states"].items())
                    or "—",
                ),
                ("Task prefixes", f"{len(summary['prefixes']):,}"),
                ("Bytes of results", format_bytes(summary["bytes"])),
                (
                    "Compute time",
                    format_time(
                        sum(p["compute_seconds_total"] for p in summary["prefixes"].values())
                    ),
                ),
            ]
        ),
        "<h2>Cluster</h2>",
        rows(
            [
                *_scheduler_rows(health),
                ("Workers", f"{len(aggregate.workers):,} ({left:,} left before the end)"),
                ("Threads", f"{threads:,}"),
                ("Clients", f"{summary['clients']:,}"),
                ("Graphs submitted", f"{len(summary['graphs']):,}"),
                ("Restarts", ", ".join(map(iso_text, health["restarts"])) or "none"),
            ]
        ),
        "<h2>Event bus health</h2>",
        rows(_health_rows(health) + input_rows(summary["input"])),
    ]
    return div("".join(parts))


def _scheduler_rows(health: dict[str, Any]) -> list[tuple[str, Any]]:
    rows: list[tuple[str, Any]] = []
    for scheduler in health["schedulers"]:
        versions = scheduler.get("versions") or {}
        rows.append(
            (
                "Scheduler",
                f"<code>{escape(str(scheduler['address']))}</code> "
                f"({escape(scheduler['scheduler_id'])})",
            )
        )
        rows.append(
            (
                "Versions",
                ", ".join(f"{escape(k)} {escape(str(v))}" for k, v in versions.items()) or "—",
            )
        )
    if not rows:
        rows.append(("Scheduler", "<span class='note'>started before the input begins</span>"))
    return rows


def _health_rows(health: dict[str, Any]) -> list[tuple[str, Any]]:
    def flag(count: int) -> str:
        return f"<span class='{'bad' if count else 'ok'}'>{count:,}</span>"

    ranges = ", ".join(f"{a}-{b}" if a != b else str(a) for a, b in health["gap_ranges"])
    return [
        ("Events in this report", f"{health['events']:,}"),
        ("Sequence numbers", f"{health['first_sequence']:,} to {health['last_sequence']:,}"),
        (
            "Missing, not announced (gaps)",
            flag(health["gaps"]) + (f" <code>{ranges}</code>" if ranges else ""),
        ),
        ("Announced as dropped", flag(health["dropped"])),
        ("Announced as oversized", flag(health["oversized"])),
        ("Duplicates removed", f"{health['duplicates']:,}"),
    ]
