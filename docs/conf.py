"""Sphinx configuration for forkjoin's documentation.

Build: ``python -m sphinx -W -b html docs docs/_build/html`` (tests/test_docs.py does this with
warnings as errors, and runs every example on the pages).

Why Sphinx (with MyST for Markdown pages and autodoc for the reference): it is actively
maintained, imports the real package so the reference is the code's own signatures and
docstrings, turns every unresolved page link, anchor or cross-reference into a warning that
``-W`` makes an error, and writes ``objects.inv``, from which the tests check that every public
name is in the reference.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE / "_ext"))
sys.path.insert(0, str(HERE.parent / "src"))  # the checkout's forkjoin, not an installed one

import forkjoin  # noqa: E402

project = "forkjoin"
author = "the forkjoin authors"
copyright = "the forkjoin authors; Apache-2.0"
release = version = forkjoin.__version__

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "forkjoin_api",  # docs/_ext/forkjoin_api.py: the reference, from each module's __all__
]
source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
root_doc = "index"
exclude_patterns = ["_build", "_ext"]

# Links to headings ([text](page.md#a-heading)) are checked like links to pages.
myst_heading_anchors = 3
myst_enable_extensions = ["colon_fence", "deflist"]

# The layers' optional engines: without them installed (a docs-only environment), autodoc
# imports the layers against stand-ins, so the reference still builds in full.
OPTIONAL_ENGINES = ("torch", "pyarrow", "pandas")


def _missing(module: str) -> bool:
    try:
        importlib.import_module(module)
    except ImportError:
        return True
    return False


autodoc_mock_imports = [module for module in OPTIONAL_ENGINES if _missing(module)]
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_preserve_defaults = True

html_theme = "furo"
html_title = f"forkjoin {release}"
html_static_path: list[str] = []
