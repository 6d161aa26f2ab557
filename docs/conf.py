"""Sphinx configuration for the dask-eventbus documentation."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import dask_eventbus

_here = Path(__file__).resolve().parent
sys.path.insert(0, str(_here / "_ext"))

import eventbus_reference  # noqa: E402

project = "dask-eventbus"
author = "dask-eventbus developers"
copyright = "2026, dask-eventbus developers"
release = dask_eventbus.__version__
version = release

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx_click",
]
html_theme = "dask_sphinx_theme"
html_static_path = ["_static"]
exclude_patterns = ["_build", "generated", "_includes"]
autodoc_member_order = "bysource"
autodoc_typehints = "description"

# Reference pages generated from eventbus.yaml and the event structs, and the
# JSON Schema that ships in the package, published beside the pages.
eventbus_reference.write_generated(_here)
os.makedirs(_here / "_static", exist_ok=True)
shutil.copy(
    Path(dask_eventbus.__file__).parent / "event-schema.json",
    _here / "_static" / "event-schema.json",
)
