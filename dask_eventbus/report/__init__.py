"""Reports of what happened on a cluster, made from its events after the fact.

:func:`build_report` reads events once and aggregates them as it goes;
the :class:`Report` gives a JSON summary or a self-contained HTML page
(the page needs Bokeh: ``pip install 'dask-eventbus[report]'``).
"""

from __future__ import annotations

from ..consume.reader import SKIPPED_KINDS
from .builder import (
    DEFAULT_STREAM_LIMIT,
    ReportBuilder,
    ReportInputWarning,
    build_report,
)
from .result import Report

__all__ = [
    "DEFAULT_STREAM_LIMIT",
    "SKIPPED_KINDS",
    "Report",
    "ReportBuilder",
    "ReportInputWarning",
    "build_report",
]
