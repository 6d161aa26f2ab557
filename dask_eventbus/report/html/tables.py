"""The Task Prefixes, Workers and Graphs tabs: tables, and the workers' timeline."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dask.utils import format_bytes, format_time

from ..aggregate import SourceAggregate
from .common import div, iso_text, note, time_figure, when

if TYPE_CHECKING:
    from bokeh.models import UIElement

MAX_TABLE_ROWS = 2000


def prefix_tab(summary: dict[str, Any]) -> UIElement:
    """The Task Prefixes tab: one sortable row per prefix, by total compute time."""
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


def workers_tab(aggregate: SourceAggregate, summary: dict[str, Any]) -> UIElement:
    """The Workers tab: joining and leaving over time, and what each ran."""
    from bokeh.models import (
        Column,
        ColumnDataSource,
        DataTable,
        HoverTool,
        NumberFormatter,
        TableColumn,
    )

    workers = summary["workers"]
    if not workers:
        return div("<h2>No workers in this input.</h2>")
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
            "added": [when(w.added) for w in spells],
            "removed": [when(w.removed) if w.removed else "still there at the end" for w in spells],
            "reason": [w.reason or "" for w in spells],
            "tasks": [w.tasks for w in spells],
            "compute": [format_time(w.compute_seconds) for w in spells],
            "compute_seconds": [w.compute_seconds for w in spells],
            "nthreads": [w.nthreads or 0 for w in spells],
            "color": ["#1f77b4" if w.removed is None else "#9e9e9e" for w in spells],
        }
    )
    plot = time_figure(
        "Workers joining and leaving",
        max(160, 60 + 26 * len(labels)),
        y_range=list(reversed(labels)),
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
    source.data["expected"] = [
        "" if w.removed is None or w.expected is None else "yes" if w.expected else "no"
        for w in spells
    ]
    # Joining (init -> running) is in the Joined column; the rest is news.
    source.data["statuses"] = [
        ", ".join(
            f"{status} at {when(t)[11:23]}"
            for t, previous, status in w.statuses
            if previous != "init"
        )
        for w in spells
    ]
    table = DataTable(
        source=source,
        columns=[
            TableColumn(field="worker", title="Worker", width=320),
            TableColumn(field="nthreads", title="Threads"),
            TableColumn(field="added", title="Joined"),
            TableColumn(field="removed", title="Left"),
            TableColumn(field="reason", title="Why it left"),
            TableColumn(field="expected", title="Expected"),
            TableColumn(field="statuses", title="Status changes", width=420),
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
    children = [plot, table]
    memory = _memory_plot(spells, labels)
    if memory is not None:
        children.insert(1, memory)
    return Column(children=children, sizing_mode="stretch_width")


def _memory_plot(spells: list[Any], labels: list[str]) -> UIElement | None:
    """Each worker's process memory over time (from dask.worker.metrics), pauses marked."""
    from bokeh.models import HoverTool, NumeralTickFormatter
    from bokeh.palettes import Category10_10

    sampled = [(spell, label) for spell, label in zip(spells, labels, strict=True) if spell.memory]
    if not sampled:
        return None
    plot = time_figure("Worker memory (process) over time; pauses marked", 260)
    for i, (spell, label) in enumerate(sampled):
        color = Category10_10[i % 10]
        times = [t * 1000.0 for t, *_ in spell.memory]
        plot.line(times, [m[1] for m in spell.memory], color=color, legend_label=label[:60])
        paused = [t * 1000.0 for t, _, status in spell.statuses if status == "paused"]
        if paused:
            peak = max(m[1] for m in spell.memory)
            plot.scatter(paused, [peak] * len(paused), marker="inverted_triangle", size=10,
                         color=color)  # fmt: skip
    plot.yaxis.formatter = NumeralTickFormatter(format="0.0 b")
    plot.legend.location = "top_left"
    plot.legend.label_text_font_size = "10px"
    plot.add_tools(HoverTool(tooltips=[("bytes", "$y{0,0}")]))
    return plot


def graphs_tab(summary: dict[str, Any]) -> UIElement:
    """The Graphs tab: each graph submitted, at most MAX_TABLE_ROWS of them."""
    from bokeh.models import Column, ColumnDataSource, DataTable, NumberFormatter, TableColumn

    graphs = summary["graphs"]
    if not graphs:
        return div("<h2>No graphs were submitted in this input.</h2>")
    shown = graphs[:MAX_TABLE_ROWS]
    source = ColumnDataSource(
        {
            "time": [iso_text(g["time"]) for g in shown],
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
            note(f"The first {len(shown):,} of {len(graphs):,} graphs; the JSON summary has all.")
        )
    children.append(table)
    if summary["spans"]:
        children.append(_spans_table(summary["spans"]))
    return Column(children=children, sizing_mode="stretch_width")


def _spans_table(spans: list[dict[str, Any]]) -> UIElement:
    """The Dask spans as a tree: each under its parent, indented by depth."""
    from bokeh.models import Column, ColumnDataSource, DataTable, NumberFormatter, TableColumn

    children: dict[str | None, list[dict[str, Any]]] = {}
    for span in spans:
        children.setdefault(span["parent_id"], []).append(span)
    ordered: list[tuple[int, dict[str, Any]]] = []
    pending = [(0, span) for span in reversed(children.get(None, []))]
    while pending and len(ordered) < MAX_TABLE_ROWS:
        depth, span = pending.pop()
        ordered.append((depth, span))
        pending.extend((depth + 1, child) for child in reversed(children.get(span["span_id"], [])))
    source = ColumnDataSource(
        {
            "name": ["\u2003" * depth + span["name"][-1] for depth, span in ordered],
            "path": [" / ".join(span["name"]) for _, span in ordered],
            "tasks": [span["tasks"] for _, span in ordered],
            "span_id": [span["span_id"] for _, span in ordered],
        }
    )
    table = DataTable(
        source=source,
        columns=[
            TableColumn(field="name", title="Span", width=300),
            TableColumn(field="tasks", title="Tasks", formatter=NumberFormatter(format="0,0")),
            TableColumn(field="path", title="Full name", width=400),
            TableColumn(field="span_id", title="Span id", width=300),
        ],
        height=min(600, 40 + 26 * len(ordered)),
        sizing_mode="stretch_width",
        index_position=None,
        sortable=False,
    )
    return Column(children=[div("<h2>Dask spans</h2>"), table], sizing_mode="stretch_width")
