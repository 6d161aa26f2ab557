"""What every tab of the page shares: styles, panels, notes, tables of rows."""

from __future__ import annotations

from datetime import datetime, timezone
from html import escape
from typing import TYPE_CHECKING, Any

from ...consume.reader import SKIPPED_KINDS

if TYPE_CHECKING:
    from bokeh.models import UIElement

ERRED_COLOR = "black"
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


def time_figure(title: str, height: int, **kwargs: Any) -> Any:
    """A Bokeh figure over time, with the tools and layout every tab's plots share."""
    from bokeh.plotting import figure

    return figure(
        title=title,
        x_axis_type="datetime",
        height=height,
        sizing_mode="stretch_width",
        tools="xpan,xwheel_zoom,box_zoom,reset,save",
        toolbar_location="above",
        **kwargs,
    )


def div(text: str, **kwargs: Any) -> UIElement:
    """A panel of HTML, framed as the performance report frames its summary."""
    from bokeh.models import Div

    return Div(
        text=text,
        stylesheets=[PAGE_STYLE],
        styles=PANEL_STYLES,
        sizing_mode="stretch_width",
        **kwargs,
    )


def note(text: str) -> UIElement:
    """A line of plain text in grey italics, above a plot."""
    from bokeh.models import Div

    return Div(
        text=f"<span class='note'>{escape(text)}</span>",
        stylesheets=[PAGE_STYLE],
        sizing_mode="stretch_width",
    )


def when(timestamp: float | None) -> str:
    """Seconds since the epoch as a readable UTC time (None: before the input)."""
    if timestamp is None:
        return "before the input starts"
    moment = datetime.fromtimestamp(timestamp, timezone.utc)
    return moment.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + " UTC"


def iso_text(text: str | None) -> str:
    """An ISO 8601 time of the summary, readable; None as a dash."""
    if text is None:
        return "—"
    return text.replace("T", " ").replace("Z", " UTC")


def rows(labelled: list[tuple[str, Any]]) -> str:
    """A two-column table of labels (escaped here) and HTML values."""
    cells = "".join(
        f"<tr><td>{escape(label)}</td><td>{value}</td></tr>" for label, value in labelled
    )
    return f"<table class='summary'>{cells}</table>"


def input_table(counts: dict[str, Any]) -> str:
    """:func:`input_rows` as a table."""
    return rows(input_rows(counts))


def input_rows(counts: dict[str, Any]) -> list[tuple[str, Any]]:
    """Rows for what was read, skipped (by kind) and left outside the window."""
    found: list[tuple[str, Any]] = [("Items read (all sources)", f"{counts['read']:,}")]
    for kind, what in SKIPPED_KINDS.items():
        skipped = counts["skipped"].get(kind, 0)
        if skipped:
            found.append((f"Skipped: {what}", f"<span class='bad'>{skipped:,}</span>"))
    if counts["outside_window"]:
        found.append(("Outside --since/--until", f"{counts['outside_window']:,}"))
    return found
