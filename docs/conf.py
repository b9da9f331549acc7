"""Sphinx configuration of the snakemq documentation (``tox -e docs``)."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

project = "snakemq"
author = "the snakemq authors"
copyright = "2010-2015 David Siroky (snakeMQ 1.x), 2026 the snakemq authors"
release = (ROOT / "VERSION").read_text().strip()
version = release

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.doctest",
    "myst_parser",
]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
exclude_patterns = ["_build"]
myst_heading_anchors = 3
suppress_warnings = [
    "myst.xref_missing",  # PROTOCOL.md and CHANGELOG link to repository files
    "misc.highlighting_failure",  # PROTOCOL.md's ```hex blocks: shown as plain text
    "ref.python",  # a type hint named by two packages (Messaging, QueuesStorage) links to either
]

autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"show-inheritance": True}
napoleon_google_docstring = True
napoleon_numpy_docstring = False
# the sync classes list their callbacks as a section of their own
napoleon_custom_sections = [("Callbacks", "params_style")]

html_theme = "alabaster"
html_title = f"snakemq {release}"
