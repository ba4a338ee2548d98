"""The docstring examples of the inference side run (pytest's --doctest-modules covers
cradle_pyro/; inference/ installs as cradle_pyro.inference, so its modules are imported by
that name here rather than collected from the folder as a second, top-level copy)."""

import doctest
import importlib
import pkgutil

import pytest

import cradle_pyro.inference as inference_side

MODULES = sorted(m.name for m in pkgutil.iter_modules(inference_side.__path__,
                                                      inference_side.__name__ + "."))


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE,
                             verbose=False)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed in {name}"
