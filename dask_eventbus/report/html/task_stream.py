"""The Task Stream tab: every timed action of finished tasks, per worker thread."""

from __future__ import annotations

import heapq
import re
from collections import defaultdict
from typing import TYPE_CHECKING, Any

from dask.utils import format_time

from ..aggregate import SourceAggregate, StreamTask
from .common import ERRED_COLOR, note, time_figure

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
_DIGITS = re.compile(r"(\d+)")


def task_stream_tab(aggregate: SourceAggregate) -> UIElement:
    """The Task Stream tab, drawn as Dask's task stream draws it."""
    import numpy as np
    from bokeh.models import (
        Column,
        ColumnDataSource,
        FixedTicker,
        HoverTool,
    )
    from distributed.utils import color_of

    tasks = aggregate.stream + aggregate.stream_erred
    rows, labels = _packrows(tasks)
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
    plot = time_figure(
        "Task Stream",
        height,
        active_scroll="xwheel_zoom",
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
    caption = (
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
    return Column(children=[note(caption), plot], sizing_mode="stretch_width")


def natural_order(text: str) -> list[Any]:
    """Sort key putting ``tcp://10.0.0.2`` before ``tcp://10.0.0.10``."""
    return [int(part) if part.isdigit() else part for part in _DIGITS.split(text)]


def _packrows(tasks: list[StreamTask]) -> tuple[list[float], dict[float, str]]:
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
