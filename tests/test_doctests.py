"""The examples in docstrings run and hold."""

import doctest
import importlib

import pytest

MODULES = [
    "loopstream.metrics",
    "loopstream.masks",
    "loopstream.models.architectures",
    "loopstream.models.average",
    "loopstream.models.augment",
    "loopstream.models.losses",
    "loopstream.models.training_run",
    "loopstream.models.targets",
    "loopstream.client.backpressure",
    "loopstream.client.shadow",
    "loopstream.serving.instance",
    "loopstream.imaging",
    "loopstream.instances",
    "loopstream.plausibility",
    "loopstream.serving.admin",
    "loopstream.serving.leftovers",
    "loopstream.serving.triton",
    "loopstream.simulator",
    "loopstream.serving.core_models",
    "loopstream.serving.frames",
    "loopstream.serving.pipelines",
    "loopstream.serving.semantic",
    "loopstream.client.sources",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name: str) -> None:
    result = doctest.testmod(importlib.import_module(name))
    assert result.attempted > 0, f"{name} has no examples"
    assert result.failed == 0
