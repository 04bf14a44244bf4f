"""Every public docstring's Example runs as written (doctest on the installed package)."""

import doctest
import importlib
import pkgutil

import pytest

import obfgrad

# Modules that need optional extras or a dataset to run their examples are skipped by name.
_SKIP = {"obfgrad.cli", "obfgrad._C"}


def _modules_with_examples():
    names = []
    for info in pkgutil.walk_packages(obfgrad.__path__, prefix="obfgrad."):
        if info.name in _SKIP:
            continue
        module = importlib.import_module(info.name)
        if any(test.examples for test in doctest.DocTestFinder().find(module)):
            names.append(info.name)
    return names


@pytest.mark.parametrize("module_name", _modules_with_examples())
def test_examples_in_docstrings_run(module_name):
    module = importlib.import_module(module_name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0
    assert result.failed == 0
