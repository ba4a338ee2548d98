"""Sphinx configuration: MyST pages, numpydoc docstrings (napoleon), the notebooks rendered.

Build: python -m sphinx -W --keep-going -b html docs docs/_build/html
The notebooks are executed by the test suite, not here: the build copies them from
../notebooks and renders them as they are.
"""

import shutil
from pathlib import Path

HERE = Path(__file__).resolve().parent

project = "cradle-pyro"
author = "the cradle-pyro developers"
copyright = "2026, the cradle-pyro developers"

extensions = [
    "myst_nb",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
]
napoleon_numpy_docstring = True
napoleon_google_docstring = False
autodoc_member_order = "bysource"
autodoc_typehints = "none"
autodoc_inherit_docstrings = False  # torch's and Pyro's own docstrings are theirs to build
napoleon_use_ivar = True  # dataclass fields: documented once, by autodoc
autodoc_default_options = {"members": True, "undoc-members": False}
nb_execution_mode = "off"
myst_heading_anchors = 3
# a parameter named like an attribute of several classes ("artifact") is not an ambiguity
# a reader meets; MyST links to files outside docs/ are repository links, not pages
suppress_warnings = ["myst.xref_missing", "myst.header", "ref.python"]
exclude_patterns = ["_build"]
html_theme = "furo"
html_title = "cradle-pyro"


def _copy_notebooks(app):
    target = HERE / "notebooks"
    target.mkdir(exist_ok=True)
    for nb in sorted((HERE.parent / "notebooks").glob("*.ipynb")):
        shutil.copyfile(nb, target / nb.name)


def setup(app):
    app.connect("builder-inited", _copy_notebooks)
