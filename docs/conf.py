"""Sphinx configuration for the dask-eventbus documentation."""

from __future__ import annotations

import os
import shutil

import dask_eventbus

project = "dask-eventbus"
author = "dask-eventbus developers"
copyright = "2026, dask-eventbus developers"
release = dask_eventbus.__version__
version = release

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.intersphinx",
    "sphinx.ext.napoleon",
    "sphinx_click",
]
html_theme = "dask_sphinx_theme"
html_static_path = ["_static"]
exclude_patterns = ["_build"]
nitpicky = False
autodoc_member_order = "bysource"
autodoc_typehints = "description"
intersphinx_mapping: dict[str, tuple[str, None]] = {}

# The JSON Schema that ships in the package is published with the docs.
_here = os.path.dirname(__file__)
os.makedirs(os.path.join(_here, "_static"), exist_ok=True)
shutil.copy(
    os.path.join(os.path.dirname(dask_eventbus.__file__), "event-schema.json"),
    os.path.join(_here, "_static", "event-schema.json"),
)
