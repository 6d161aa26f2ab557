"""The Failures tab: failed tasks by exception, and what failed because of them."""

from __future__ import annotations

import re
from collections import defaultdict
from html import escape
from typing import TYPE_CHECKING, Any

from ..aggregate import SourceAggregate
from .common import div, iso_text, rows

if TYPE_CHECKING:
    from bokeh.models import UIElement

MAX_FAILURE_GROUPS = 50
MAX_ROOTS_PER_GROUP = 30
MAX_DEPENDENTS_SHOWN = 20
_EXCEPTION_NAME = re.compile(r"[A-Za-z_][\w.]*(?=[(:]|$)")


def failures_tab(aggregate: SourceAggregate, summary: dict[str, Any]) -> UIElement:
    """The Failures tab: tasks that failed themselves, by exception type, with their dependents."""
    failures = summary["failures"]
    departures = _departures_html(summary["workers"])
    if not failures:
        return div("<h2>No task failed.</h2>" + departures)
    details = aggregate.failures
    dependents: dict[str, list[str]] = defaultdict(list)
    roots: list[dict[str, Any]] = []
    for failure in failures:
        if failure["cause"] is None or failure["cause"] not in details:
            roots.append(failure)
        if failure["cause"] is not None:
            dependents[failure["cause"]].append(failure["key"])
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for failure in roots:
        groups[exception_kind(failure["exception"])].append(failure)
    ordered = sorted(groups.items(), key=lambda item: -len(item[1]))
    parts = [
        f"<h1>Failures</h1><p>{len(failures):,} tasks erred: {len(roots):,} failed themselves "
        f"and {len(failures) - len(roots):,} because a task they depend on failed.</p>"
    ]
    for exception, group in ordered[:MAX_FAILURE_GROUPS]:
        blamed = sum(len(dependents.get(f["key"], ())) for f in group)
        parts.append(
            f"<h2><code>{escape(exception)}</code></h2><p>{len(group):,} failed task(s), "
            f"{blamed:,} dependent(s) failed because of them.</p>"
        )
        for failure in group[:MAX_ROOTS_PER_GROUP]:
            parts.append(_failure_html(failure, details.get(failure["key"]), dependents))
        if len(group) > MAX_ROOTS_PER_GROUP:
            parts.append(
                f"<p class='note'>… and {len(group) - MAX_ROOTS_PER_GROUP:,} more; "
                "the JSON summary lists every one.</p>"
            )
    if len(ordered) > MAX_FAILURE_GROUPS:
        parts.append(
            f"<p class='note'>… and {len(ordered) - MAX_FAILURE_GROUPS:,} more kinds of "
            "exception; the JSON summary lists every failure.</p>"
        )
    parts.append(departures)
    return div("".join(parts))


def _departures_html(workers: list[dict[str, Any]]) -> str:
    """Workers that left while running tasks: what they were running and whether expected."""
    left = [w for w in workers if w["processing_at_departure_total"]]
    if not left:
        return ""
    rows = []
    for w in left:
        shown = w["processing_at_departure"]
        keys = ", ".join(f"<code>{escape(k)}</code>" for k in shown)
        more = w["processing_at_departure_total"] - len(shown)
        if more > 0:
            keys += f" … and {more:,} more"
        expected = {True: "yes", False: "no"}.get(w["expected"], "unknown")
        rows.append(
            f"<tr><td><code>{escape(w['address'])}</code></td><td>{escape(iso_text(w['removed']))}"
            f"</td><td>{expected}</td><td>{w['lost_results']:,}</td><td>{keys}</td></tr>"
        )
    return (
        "<h2>Workers that left while running tasks</h2>"
        "<p>The scheduler gives their tasks to other workers; a task whose workers keep "
        "dying fails with KilledWorker.</p>"
        "<table><tr><th>Worker</th><th>Left</th><th>Expected</th><th>Results lost</th>"
        f"<th>Running when it left</th></tr>{''.join(rows)}</table>"
    )


def exception_kind(text: str | None) -> str:
    """The exception's type name from its text: ``ValueError('x')`` -> ``ValueError``."""
    if not text:
        return "(no exception text)"
    found = _EXCEPTION_NAME.match(text)
    return found.group(0) if found else text.splitlines()[0][:80]


def _failure_html(failure: dict[str, Any], detail: Any, dependents: dict[str, list[str]]) -> str:
    key = failure["key"]
    lines = [
        f"<h3><code>{escape(key)}</code></h3>",
        rows(
            [
                ("Prefix", escape(failure["prefix"])),
                ("Worker", f"<code>{escape(failure['worker'] or '—')}</code>"),
                ("Time", iso_text(failure["time"])),
                *(
                    [("Blamed on", f"<code>{escape(failure['cause'])}</code>")]
                    if failure["cause"]
                    else []
                ),
            ]
        ),
    ]
    exception = detail.exception if detail is not None else None
    traceback = detail.traceback if detail is not None else None
    if exception:
        lines.append(f"<pre>{escape(exception)}</pre>")
    if traceback:
        lines.append(
            f"<details><summary>Traceback</summary><pre>{escape(traceback)}</pre></details>"
        )
    failed = dependents.get(key, [])
    if failed:
        # In the order they failed: the order the failure spread in.
        shown = " → ".join(f"<code>{escape(k)}</code>" for k in failed[:MAX_DEPENDENTS_SHOWN])
        more = len(failed) - MAX_DEPENDENTS_SHOWN
        lines.append(
            f"<p>{len(failed):,} dependent task(s) failed because of it: "
            f"{shown}{f' and {more:,} more' if more > 0 else ''}</p>"
        )
    return "".join(lines)
