"""The docstring examples of the model and metrics modules run and hold."""

import doctest
import importlib

import pytest

MODULES = [
    "loopstream.metrics",
    "loopstream.models.architectures",
    "loopstream.models.augment",
    "loopstream.models.losses",
    "loopstream.models.targets",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name: str) -> None:
    result = doctest.testmod(importlib.import_module(name))
    assert result.attempted > 0, f"{name} has no examples"
    assert result.failed == 0
