"""The HTML page of a report, made with Bokeh as Dask's performance reports are.

One self-contained file: Bokeh's scripts and styles are inlined, so it opens
with no network. One set of tabs per source (scheduler), with a chooser at
the top when there are several.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..aggregate import SourceAggregate
from ..result import Report, summarize
from .common import PAGE_STYLE, PANEL_STYLES, input_table
from .failures import failures_tab
from .progress_tab import progress_tab
from .summary_tab import summary_tab
from .tables import graphs_tab, prefix_tab, workers_tab
from .task_stream import task_stream_tab

if TYPE_CHECKING:
    from bokeh.models import UIElement


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
            + input_table(input_counts),
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
                code="const at = cb_obj.options.indexOf(cb_obj.value);"
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
        ("Summary", summary_tab(aggregate, summary)),
        ("Task Stream", task_stream_tab(aggregate)),
        ("Progress", progress_tab(aggregate, summary)),
        ("Task Prefixes", prefix_tab(summary)),
        ("Failures", failures_tab(aggregate, summary)),
        ("Workers", workers_tab(aggregate, summary)),
        ("Graphs", graphs_tab(summary)),
    ]
    return Tabs(
        tabs=[TabPanel(child=child, title=title) for title, child in tabs],
        sizing_mode="stretch_width",
        name=name,
    )
