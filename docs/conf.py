"""Sphinx configuration of the jaxdd documentation site.

Build: ``sphinx-build -W --keep-going -b html docs docs/_build/html`` (warnings are errors; a
broken internal link is a warning).
"""
import os
import shutil
import sys

sys.path.insert(0, os.path.abspath("_ext"))
sys.path.insert(0, os.path.abspath(".."))

project = "jaxdd"
author = "the jaxdd authors"
copyright = "2026, the jaxdd authors"  # noqa: A001 - Sphinx's name for the setting

extensions = [
    "myst_nb",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "api_coverage",
]

source_suffix = {".rst": "restructuredtext", ".md": "myst-nb", ".ipynb": "myst-nb"}
exclude_patterns = ["_build", "requirements.txt", "**/.ipynb_checkpoints"]
templates_path = ["_templates"]

# Markdown
myst_enable_extensions = ["colon_fence", "dollarmath", "deflist"]
myst_heading_anchors = 4
suppress_warnings = []

# Notebooks are rendered with the outputs stored in them; the build never executes one. The
# quickstart notebook lives with the experiments; the site renders a copy of it.
nb_execution_mode = "off"
_NOTEBOOK = os.path.join(os.path.dirname(__file__), "..", "experiments", "notebooks",
                         "quickstart.ipynb")
os.makedirs(os.path.join(os.path.dirname(__file__), "notebooks"), exist_ok=True)
shutil.copyfile(_NOTEBOOK, os.path.join(os.path.dirname(__file__), "notebooks", "quickstart.ipynb"))

# API reference: one page per module, every public name documented where it is defined.
autosummary_generate = True
autosummary_imported_members = False
autodoc_default_options = {"members": True, "undoc-members": True, "ignore-module-all": True}
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_typehints_format = "short"
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
napoleon_use_ivar = True

html_theme = "furo"
html_title = "jaxdd"
html_static_path = []
