"""The HTML page of a report, made with Bokeh as Dask's performance reports are.

One self-contained file: Bokeh's scripts and styles are inlined, so it opens
with no network. One set of tabs per source (scheduler), with a chooser at
the top when there are several.
"""

from __future__ import annotations

import heapq
import re
from collections import defaultdict
from datetime import datetime, timezone
from html import escape
from typing import TYPE_CHECKING, Any

from dask.utils import format_bytes, format_time

from .aggregate import SourceAggregate, StreamTask
from .result import Report, summarize

if TYPE_CHECKING:
    from bokeh.models import UIElement

# As distributed's task stream draws the actions (diagnostics/task_stream.py):
# compute in the task prefix's colour (black when it erred), the rest muted.
ACTION_COLORS = {
    "transfer": "red",
    "disk-write": "orange",
    "disk-read": "orange",
    "deserialize": "gray",
}
ACTION_ALPHA = 0.4
ERRED_COLOR = "black"
UNFINISHED_COLOR = "#d3d3d3"
# distributed's _STYLES for the performance report's summary.
PANEL_STYLES = {
    "width": "100%",
    "box-sizing": "border-box",
    "padding": "12px",
    "border": "1px solid lightgray",
    "box-shadow": "inset 1px 0 8px 0 lightgray",
    "overflow": "auto",
}
PAGE_STYLE = """
:host { font-family: -apple-system, BlinkMacSystemFont, "Segoe UI", Helvetica, Arial,
        sans-serif; font-size: 14px; }
h1 { font-size: 24px; margin: 0 0 8px 0; }
h2 { font-size: 18px; margin: 18px 0 6px 0; }
h3 { font-size: 15px; margin: 14px 0 4px 0; }
table.summary td { padding: 1px 14px 1px 0; vertical-align: top; }
table.summary td:first-child { color: #555; }
.bad { color: #b00020; font-weight: bold; }
.ok { color: #2e7d32; }
.note { color: #666; font-style: italic; }
code, pre { font-family: Menlo, Monaco, Consolas, monospace; font-size: 12px; }
pre { background: #f6f6f6; padding: 8px; overflow-x: auto; }
details summary { cursor: pointer; color: #1565c0; }
"""
MAX_PROGRESS_PREFIXES = 40
MAX_TIMELINE_PREFIXES = 10
MAX_FAILURE_GROUPS = 50
MAX_ROOTS_PER_GROUP = 30
MAX_DEPENDENTS_SHOWN = 20
MAX_TABLE_ROWS = 2000
_DIGITS = re.compile(r"(\d+)")
_EXCEPTION_NAME = re.compile(r"[A-Za-z_][\w.]*(?=[(:]|$)")


def require_bokeh() -> None:
    """Raise a clear ImportError naming the extra when Bokeh is not installed."""
    try:
        import bokeh  # noqa: F401
    except ImportError:
        raise ImportError(
            "the HTML report needs Bokeh: pip install 'dask-eventbus[report]' "
            "(or use --format json)"
        ) from None


def render(report: Report) -> str:
    """The whole page."""
    require_bokeh()
    from bokeh.embed import file_html
    from bokeh.models import Column, CustomJS, Div, Select
    from bokeh.resources import INLINE

    title = "Dask cluster report"
    if not report.aggregates:
        input_counts = report.input_counts()
        body = Div(
            text=f"<h1>{title}</h1><p class='bad'>The input holds no events to report on.</p>"
            + _input_table(input_counts),
            stylesheets=[PAGE_STYLE],
            styles=PANEL_STYLES,
            sizing_mode="stretch_width",
        )
        return file_html(body, INLINE, title=title)

    pages = [
        _source_page(report, aggregate, f"report-tabs-{i}")
        for i, aggregate in enumerate(report.aggregates)
    ]
    for page in pages[1:]:
        page.visible = False
    children: list[UIElement] = []
    if len(pages) > 1:
        chooser = Select(
            title=f"{len(pages)} schedulers in this input; showing:",
            options=report.sources,
            value=report.sources[0],
            width=700,
            name="report-chooser",
        )
        chooser.js_on_change(
            "value",
            CustomJS(
                args={"pages": pages},
                code="const at = this.options.indexOf(this.value);"
                "pages.forEach((page, i) => { page.visible = i === at; });",
            ),
        )
        children.append(chooser)
    layout = Column(children=[*children, *pages], sizing_mode="stretch_width")
    return file_html(layout, INLINE, title=title)


def _source_page(report: Report, aggregate: SourceAggregate, name: str) -> UIElement:
    from bokeh.models import TabPanel, Tabs

    summary = summarize([aggregate], report.input_counts())
    tabs = [
        ("Summary", _summary(aggregate, summary)),
        ("Task Stream", _task_stream(aggregate)),
        ("Progress", _progress(aggregate, summary)),
        ("Task Prefixes", _prefix_table(summary)),
        ("Failures", _failures(aggregate, summary)),
        ("Workers", _workers(aggregate, summary)),
        ("Graphs", _graphs(summary)),
    ]
    return Tabs(
        tabs=[TabPanel(child=child, title=title) for title, child in tabs],
        sizing_mode="stretch_width",
        name=name,
    )


def _div(text: str, **kwargs: Any) -> UIElement:
    from bokeh.models import Div

    return Div(
        text=text,
        stylesheets=[PAGE_STYLE],
        styles=PANEL_STYLES,
        sizing_mode="stretch_width",
        **kwargs,
    )


def _when(timestamp: float | None) -> str:
    if timestamp is None:
        return "before the input starts"
    moment = datetime.fromtimestamp(timestamp, timezone.utc)
    return moment.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + " UTC"


def _iso_text(text: str | None) -> str:
    if text is None:
        return "—"
    return text.replace("T", " ").replace("Z", " UTC")


def _rows(rows: list[tuple[str, Any]]) -> str:
    cells = "".join(f"<tr><td>{escape(label)}</td><td>{value}</td></tr>" for label, value in rows)
    return f"<table class='summary'>{cells}</table>"


def _input_table(counts: dict[str, Any]) -> str:
    return _rows(_input_rows(counts))


def _input_rows(counts: dict[str, Any]) -> list[tuple[str, Any]]:
    from .builder import SKIPPED_KINDS

    rows: list[tuple[str, Any]] = [("Items read (all sources)", f"{counts['read']:,}")]
    for kind, what in SKIPPED_KINDS.items():
        skipped = counts["skipped"].get(kind, 0)
        if skipped:
            rows.append((f"Skipped: {what}", f"<span class='bad'>{skipped:,}</span>"))
    if counts["outside_window"]:
        rows.append(("Outside --since/--until", f"{counts['outside_window']:,}"))
    return rows


# ------------------------------------------------------------------ summary


def _summary(aggregate: SourceAggregate, summary: dict[str, Any]) -> UIElement:
    health = summary["sources"][0]
    tasks = summary["tasks"]
    duration = summary["duration_seconds"] or 0.0
    threads = sum(w.nthreads or 0 for w in aggregate.workers)
    left = sum(1 for w in aggregate.workers if w.removed is not None)
    parts = [
        "<h1>Dask cluster report</h1>",
        f"<i>{escape(aggregate.source)}: select the tabs above for more.</i>",
        f"<h2>Duration: {format_time(duration)}</h2>",
        _rows(
            [
                ("Start", _iso_text(summary["start"])),
                ("End", _iso_text(summary["end"])),
            ]
        ),
        "<h2>Tasks</h2>",
        _rows(
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
        _rows(
            [
                *_scheduler_rows(health),
                ("Workers", f"{len(aggregate.workers):,} ({left:,} left before the end)"),
                ("Threads", f"{threads:,}"),
                ("Clients", f"{summary['clients']:,}"),
                ("Graphs submitted", f"{len(summary['graphs']):,}"),
                ("Restarts", ", ".join(map(_iso_text, health["restarts"])) or "none"),
            ]
        ),
        "<h2>Event bus health</h2>",
        _rows(_health_rows(health) + _input_rows(summary["input"])),
    ]
    return _div("".join(parts))


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


# -------------------------------------------------------------- task stream


def _task_stream(aggregate: SourceAggregate) -> UIElement:
    import numpy as np
    from bokeh.models import (
        Column,
        ColumnDataSource,
        FixedTicker,
        HoverTool,
    )
    from bokeh.plotting import figure
    from distributed.utils import color_of

    tasks = aggregate.stream + aggregate.stream_erred
    rows, labels = _pack_rows(tasks)
    x, width, y, colors, alphas = [], [], [], [], []
    keys, names, actions, durations, workers = [], [], [], [], []
    for task, row in zip(tasks, rows, strict=True):
        for action, start, stop in task.startstops:
            x.append((start + stop) * 500.0)
            width.append((stop - start) * 1000.0)
            y.append(row)
            if action == "compute":
                colors.append(ERRED_COLOR if task.erred else color_of(task.prefix))
                alphas.append(1.0)
            else:
                colors.append(ACTION_COLORS.get(action, "gray"))
                alphas.append(ACTION_ALPHA)
            keys.append(task.key)
            names.append(task.prefix if action == "compute" else f"{action}-{task.prefix}")
            actions.append(action + (" (erred)" if task.erred else ""))
            durations.append(format_time(stop - start))
            workers.append(task.worker)
    source = ColumnDataSource(
        {
            "x": np.array(x),
            "width": np.array(width),
            "y": np.array(y, dtype=float),
            "color": colors,
            "alpha": np.array(alphas),
            "key": keys,
            "name": names,
            "action": actions,
            "duration": durations,
            "worker": workers,
        }
    )
    height = int(min(900, max(300, 40 + 14 * (max(rows, default=0) + 1))))
    plot = figure(
        title="Task Stream",
        x_axis_type="datetime",
        height=height,
        sizing_mode="stretch_width",
        tools="xpan,xwheel_zoom,box_zoom,reset,save",
        active_scroll="xwheel_zoom",
        toolbar_location="above",
        min_border_bottom=50,
        output_backend="webgl",
    )
    plot.rect(
        source=source,
        x="x",
        y="y",
        width="width",
        height=0.4,
        fill_color="color",
        line_color="color",
        line_alpha=0.6,
        fill_alpha="alpha",
        line_width=3,
    )
    plot.add_tools(
        HoverTool(
            point_policy="follow_mouse",
            tooltips=[
                ("key", "@key"),
                ("prefix", "@name"),
                ("action", "@action"),
                ("duration", "@duration"),
                ("worker", "@worker"),
            ],
        )
    )
    plot.xgrid.visible = False
    plot.ygrid.visible = False
    plot.yaxis.ticker = FixedTicker(ticks=list(labels))
    plot.yaxis.major_label_overrides = {float(k): v for k, v in labels.items()}
    plot.y_range.flipped = True
    shown = len(aggregate.stream)
    total = aggregate.stream_seen
    note = (
        f"A random sample of {shown:,} of the {total:,} finished tasks, so that the page "
        "stays responsive"
        + (
            f", plus {len(aggregate.stream_erred):,} erred tasks (black)"
            if aggregate.stream_erred
            else ""
        )
        + ". Counts and times elsewhere in the report include every task."
        if total > shown
        else f"Every finished task: {len(tasks):,}, one row per worker thread; "
        "erred computations are black, transfers red, disk reads and writes orange."
    )
    return Column(children=[_note(note), plot], sizing_mode="stretch_width")


def _note(text: str) -> UIElement:
    from bokeh.models import Div

    return Div(
        text=f"<span class='note'>{escape(text)}</span>",
        stylesheets=[PAGE_STYLE],
        sizing_mode="stretch_width",
    )


def natural_order(text: str) -> list[Any]:
    """Sort key putting ``tcp://10.0.0.2`` before ``tcp://10.0.0.10``."""
    return [int(part) if part.isdigit() else part for part in _DIGITS.split(text)]


def _pack_rows(tasks: list[StreamTask]) -> tuple[list[float], dict[float, str]]:
    """A row per task (worker thread), and a label at each worker's first row.

    Events do not say which thread ran a task, so each worker's tasks are
    packed into as few rows as never overlap, like threads.
    """
    by_worker: dict[str, list[int]] = defaultdict(list)
    for index, task in enumerate(tasks):
        if task.startstops:
            by_worker[task.worker].append(index)
    rows = [0.0] * len(tasks)
    labels: dict[float, str] = {}
    offset = 0.0
    for worker in sorted(by_worker, key=natural_order):
        indices = sorted(by_worker[worker], key=lambda i: tasks[i].startstops[0][1])
        free: list[tuple[float, int]] = []  # (end, row) heap
        used = 0
        for i in indices:
            begin = min(s for _, s, _ in tasks[i].startstops)
            end = max(s for _, _, s in tasks[i].startstops)
            if free and free[0][0] <= begin:
                _, row = heapq.heapreplace(free, (end, free[0][1]))
            else:
                row = used
                used += 1
                heapq.heappush(free, (end, row))
            rows[i] = offset + row * 0.5
        labels[offset] = worker
        offset += used * 0.5 + 1.0
    return rows, labels


# ----------------------------------------------------------------- progress


def _progress(aggregate: SourceAggregate, summary: dict[str, Any]) -> UIElement:
    import numpy as np
    from bokeh.models import Column, ColumnDataSource, HoverTool, Legend
    from bokeh.plotting import figure
    from distributed.utils import color_of

    prefixes = summary["prefixes"]
    by_count = sorted(prefixes, key=lambda p: -prefixes[p]["tasks"])
    shown = by_count[:MAX_PROGRESS_PREFIXES]
    names = list(reversed(shown))
    bars = ColumnDataSource(
        {
            "prefix": names,
            "memory": [prefixes[p]["memory"] for p in names],
            "erred": [prefixes[p]["erred"] for p in names],
            "unfinished": [
                max(0, prefixes[p]["tasks"] - prefixes[p]["memory"] - prefixes[p]["erred"])
                for p in names
            ],
            "tasks": [prefixes[p]["tasks"] for p in names],
            "color": [color_of(p) for p in names],
        }
    )
    bars_plot = figure(
        title="Progress by task prefix at the end (memory, erred, unfinished)",
        y_range=names,
        height=max(180, 60 + 22 * len(names)),
        sizing_mode="stretch_width",
        tools="",
        toolbar_location=None,
    )
    bars_plot.hbar_stack(
        ["memory", "erred", "unfinished"],
        y="prefix",
        height=0.7,
        source=bars,
        color=["color", ERRED_COLOR, UNFINISHED_COLOR],
        fill_alpha=0.8,
        line_color="white",
    )
    bars_plot.add_tools(
        HoverTool(
            tooltips=[
                ("prefix", "@prefix"),
                ("tasks", "@tasks"),
                ("memory", "@memory"),
                ("erred", "@erred"),
                ("unfinished", "@unfinished"),
            ]
        )
    )
    bars_plot.x_range.start = 0
    bars_plot.min_border_left = 140
    bars_plot.ygrid.visible = False

    top = by_count[:MAX_TIMELINE_PREFIXES]
    series = [("added", p) for p in top] + [("done", p) for p in top]
    times, values = aggregate.timeline.cumulative([*series, ("processing",)])
    stamps = np.array(times) * 1000.0
    done_plot = figure(
        title="Tasks done (memory or erred) as a share of the tasks known, per prefix",
        x_axis_type="datetime",
        height=320,
        sizing_mode="stretch_width",
        tools="xpan,xwheel_zoom,box_zoom,reset,save",
        toolbar_location="above",
    )
    items = []
    for prefix in top:
        added = np.array(values[("added", prefix)], dtype=float)
        done = np.array(values[("done", prefix)], dtype=float)
        share = np.divide(100.0 * done, added, out=np.zeros_like(done), where=added > 0)
        line = done_plot.step(stamps, share, line_width=2, color=color_of(prefix), mode="after")
        items.append((prefix, [line]))
    done_plot.add_layout(Legend(items=items, click_policy="hide"), "right")
    done_plot.y_range.start = 0
    done_plot.y_range.end = 102
    done_plot.yaxis.axis_label = "% done"

    processing_plot = figure(
        title="Tasks processing",
        x_axis_type="datetime",
        x_range=done_plot.x_range,
        height=220,
        sizing_mode="stretch_width",
        tools="xpan,xwheel_zoom,box_zoom,reset,save",
        toolbar_location="above",
    )
    processing = np.array(values[("processing",)], dtype=float)
    processing_plot.varea_step(
        x=stamps, y1=np.zeros_like(processing), y2=processing, step_mode="after", fill_alpha=0.5
    )
    processing_plot.y_range.start = 0
    width = format_time(aggregate.timeline.width)
    more = len(by_count) - len(shown)
    note = (
        f"Counted in steps of {width}. "
        + (f"The {more:,} smallest prefixes are left out of the bars. " if more > 0 else "")
        + (f"The lines show the {len(top)} largest prefixes." if len(by_count) > len(top) else "")
    )
    return Column(
        children=[_note(note), bars_plot, done_plot, processing_plot],
        sizing_mode="stretch_width",
    )


# ------------------------------------------------------------ prefix table


def _prefix_table(summary: dict[str, Any]) -> UIElement:
    from bokeh.models import ColumnDataSource, DataTable, NumberFormatter, TableColumn

    prefixes = summary["prefixes"]
    names = list(prefixes)

    def column(field: str) -> list[Any]:
        return [prefixes[p][field] for p in names]

    source = ColumnDataSource(
        {
            "prefix": names,
            "tasks": column("tasks"),
            "memory": column("memory"),
            "erred": column("erred"),
            "total": column("compute_seconds_total"),
            "median": [
                v if v is not None else float("nan") for v in column("compute_seconds_median")
            ],
            "p95": [v if v is not None else float("nan") for v in column("compute_seconds_p95")],
            "max": [v if v is not None else float("nan") for v in column("compute_seconds_max")],
            "nbytes": [format_bytes(v) for v in column("nbytes_total")],
        }
    )
    seconds = NumberFormatter(format="0,0.000")
    count = NumberFormatter(format="0,0")
    columns = [
        TableColumn(field="prefix", title="Prefix", width=220),
        TableColumn(field="tasks", title="Tasks", formatter=count),
        TableColumn(field="memory", title="Memory", formatter=count),
        TableColumn(field="erred", title="Erred", formatter=count),
        TableColumn(field="total", title="Compute total (s)", formatter=seconds),
        TableColumn(field="median", title="Median (s)", formatter=seconds),
        TableColumn(field="p95", title="95th pct (s)", formatter=seconds),
        TableColumn(field="max", title="Max (s)", formatter=seconds),
        TableColumn(field="nbytes", title="Bytes"),
    ]
    return DataTable(
        source=source,
        columns=columns,
        height=min(800, 40 + 26 * max(1, len(names))),
        sizing_mode="stretch_width",
        index_position=None,
    )


# ----------------------------------------------------------------- failures


def _failures(aggregate: SourceAggregate, summary: dict[str, Any]) -> UIElement:
    failures = summary["failures"]
    if not failures:
        return _div("<h2>No task failed.</h2>")
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
    return _div("".join(parts))


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
        _rows(
            [
                ("Prefix", escape(failure["prefix"])),
                ("Worker", f"<code>{escape(failure['worker'] or '—')}</code>"),
                ("Time", _iso_text(failure["time"])),
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


# ------------------------------------------------------------------ workers


def _workers(aggregate: SourceAggregate, summary: dict[str, Any]) -> UIElement:
    from bokeh.models import (
        Column,
        ColumnDataSource,
        DataTable,
        HoverTool,
        NumberFormatter,
        TableColumn,
    )
    from bokeh.plotting import figure

    workers = summary["workers"]
    if not workers:
        return _div("<h2>No workers in this input.</h2>")
    start = aggregate.start or 0.0
    end = aggregate.end or start
    labels = [f"{w['name']} ({w['address']})" if w["name"] else w["address"] for w in workers]
    # Several spells of one worker get one row each.
    labels = [
        f"{label} #{i + 1}" if labels.count(label) > 1 else label for i, label in enumerate(labels)
    ]
    spells = aggregate.workers
    source = ColumnDataSource(
        {
            "worker": labels,
            "left": [(w.added if w.added is not None else start) * 1000.0 for w in spells],
            "right": [(w.removed if w.removed is not None else end) * 1000.0 for w in spells],
            "added": [_when(w.added) for w in spells],
            "removed": [
                _when(w.removed) if w.removed else "still there at the end" for w in spells
            ],
            "reason": [w.reason or "" for w in spells],
            "tasks": [w.tasks for w in spells],
            "compute": [format_time(w.compute_seconds) for w in spells],
            "compute_seconds": [w.compute_seconds for w in spells],
            "nthreads": [w.nthreads or 0 for w in spells],
            "color": ["#1f77b4" if w.removed is None else "#9e9e9e" for w in spells],
        }
    )
    plot = figure(
        title="Workers joining and leaving",
        y_range=list(reversed(labels)),
        x_axis_type="datetime",
        height=max(160, 60 + 26 * len(labels)),
        sizing_mode="stretch_width",
        tools="xpan,xwheel_zoom,box_zoom,reset,save",
        toolbar_location="above",
    )
    plot.hbar(
        y="worker", left="left", right="right", height=0.6, color="color", alpha=0.7, source=source
    )
    plot.text(
        x="right",
        y="worker",
        text="reason",
        source=source,
        x_offset=-6,
        text_align="right",
        text_font_size="11px",
        text_baseline="middle",
    )
    plot.add_tools(
        HoverTool(
            tooltips=[
                ("worker", "@worker"),
                ("joined", "@added"),
                ("left", "@removed"),
                ("reason", "@reason"),
                ("tasks", "@tasks"),
                ("compute", "@compute"),
            ]
        )
    )
    plot.ygrid.visible = False
    table = DataTable(
        source=source,
        columns=[
            TableColumn(field="worker", title="Worker", width=320),
            TableColumn(field="nthreads", title="Threads"),
            TableColumn(field="added", title="Joined"),
            TableColumn(field="removed", title="Left"),
            TableColumn(field="reason", title="Why it left"),
            TableColumn(field="tasks", title="Tasks", formatter=NumberFormatter(format="0,0")),
            TableColumn(
                field="compute_seconds",
                title="Compute (s)",
                formatter=NumberFormatter(format="0,0.000"),
            ),
        ],
        height=min(600, 40 + 26 * len(labels)),
        sizing_mode="stretch_width",
        index_position=None,
    )
    return Column(children=[plot, table], sizing_mode="stretch_width")


# ------------------------------------------------------------------- graphs


def _graphs(summary: dict[str, Any]) -> UIElement:
    from bokeh.models import Column, ColumnDataSource, DataTable, NumberFormatter, TableColumn

    graphs = summary["graphs"]
    if not graphs:
        return _div("<h2>No graphs were submitted in this input.</h2>")
    shown = graphs[:MAX_TABLE_ROWS]
    source = ColumnDataSource(
        {
            "time": [_iso_text(g["time"]) for g in shown],
            "client": [g["client"] for g in shown],
            "tasks": [g["tasks"] for g in shown],
            "keys": [g["keys"] for g in shown],
            "prefixes": [
                ", ".join(
                    f"{p}: {n:,}" for p, n in sorted(g["prefixes"].items(), key=lambda i: -i[1])
                )
                for g in shown
            ],
        }
    )
    count = NumberFormatter(format="0,0")
    table = DataTable(
        source=source,
        columns=[
            TableColumn(field="time", title="Time", width=190),
            TableColumn(field="client", title="Client", width=300),
            TableColumn(field="tasks", title="Tasks", formatter=count, width=80),
            TableColumn(field="keys", title="Keys asked for", formatter=count, width=100),
            TableColumn(field="prefixes", title="Tasks by prefix", width=600),
        ],
        height=min(800, 40 + 26 * len(shown)),
        sizing_mode="stretch_width",
        index_position=None,
    )
    children: list[UIElement] = []
    if len(graphs) > len(shown):
        children.append(
            _note(f"The first {len(shown):,} of {len(graphs):,} graphs; the JSON summary has all.")
        )
    return Column(children=[*children, table], sizing_mode="stretch_width")
