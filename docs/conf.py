"""Sphinx configuration for the trio_connmgr documentation (`make docs`)."""

project = "trio_connmgr"
author = "the trio_connmgr authors"
extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinxcontrib_trio",
    "myst_parser",
]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
master_doc = "index"
exclude_patterns = ["_build"]
autodoc_member_order = "bysource"
autodoc_typehints = "description"
napoleon_google_docstring = True
myst_heading_anchors = 3
html_theme = "alabaster"
nitpicky = False
