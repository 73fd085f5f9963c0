"""The examples in the docstrings of the core modules run and print what they say."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = [
    "lambdahat.config",
    "lambdahat.estimator",
    "lambdahat.functional",
    "lambdahat.problem",
    "lambdahat.trust",
    "lambdahat.truth",
    "lambdahat.plotting",
    "lambdahat.sweeps.grid",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0, f"{name} has no examples"
    assert result.failed == 0
