"""The Progress tab: tasks per prefix, at the end and over time."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dask.utils import format_time

from ..aggregate import SourceAggregate
from .common import ERRED_COLOR, note, time_figure

if TYPE_CHECKING:
    from bokeh.models import UIElement

UNFINISHED_COLOR = "#d3d3d3"
MAX_PROGRESS_PREFIXES = 40
MAX_TIMELINE_PREFIXES = 10


def progress_tab(aggregate: SourceAggregate, summary: dict[str, Any]) -> UIElement:
    """The Progress tab: per prefix at the end and over time, and tasks processing."""
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
    done_plot = time_figure(
        "Tasks done (memory or erred) as a share of the tasks known, per prefix", 320
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

    processing_plot = time_figure("Tasks processing", 220, x_range=done_plot.x_range)
    processing = np.array(values[("processing",)], dtype=float)
    # Steps drawn as an area, by hand: varea_step is newer than Bokeh 3.1.
    step_x, step_y = np.repeat(stamps, 2)[1:], np.repeat(processing, 2)[:-1]
    processing_plot.varea(x=step_x, y1=np.zeros_like(step_y), y2=step_y, fill_alpha=0.5)
    processing_plot.y_range.start = 0
    width = format_time(aggregate.timeline.width)
    more = len(by_count) - len(shown)
    caption = (
        f"Counted in steps of {width}. "
        + (f"The {more:,} smallest prefixes are left out of the bars. " if more > 0 else "")
        + (f"The lines show the {len(top)} largest prefixes." if len(by_count) > len(top) else "")
    )
    return Column(
        children=[note(caption), bars_plot, done_plot, processing_plot],
        sizing_mode="stretch_width",
    )
