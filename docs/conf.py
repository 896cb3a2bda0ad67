"""Sphinx configuration: the gpucnn user guide and API reference.

Build (fails on any warning)::

    python -m sphinx -W --keep-going -b html docs docs/_build/html
"""

import gpucnn

project = "gpucnn"
author = "gpucnn contributors"
copyright = "gpucnn contributors, MIT License"
version = release = gpucnn.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
    "myst_parser",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]

# numpy-style docstrings through napoleon
napoleon_google_docstring = False
napoleon_numpy_docstring = True
napoleon_use_rtype = False

templates_path = ["_templates"]
autosummary_generate = True
autodoc_default_options = {"members": True, "show-inheritance": True}
autodoc_member_order = "bysource"
autodoc_typehints = "description"
# optional dependencies are not needed to build the reference
autodoc_mock_imports = ["cupy", "mpi4py", "onnx", "onnxruntime", "matplotlib"]

myst_heading_anchors = 3
myst_enable_extensions = ["colon_fence"]

html_theme = "furo"
html_title = f"gpucnn {release}"


def _skip_sklearn_request_methods(app, what, name, obj, skip, options):
    """scikit-learn adds ``set_*_request`` methods to every estimator; its own docs describe
    them (their docstrings point into scikit-learn's glossary)."""
    if name.startswith("set_") and name.endswith("_request"):
        return True
    return None


def setup(app):
    app.connect("autodoc-skip-member", _skip_sklearn_request_methods)
