"""The examples in docstrings run and hold."""

import doctest
import importlib

import pytest

MODULES = [
    "loopstream.core.measures",
    "loopstream.core.masks",
    "loopstream.models.architectures",
    "loopstream.models.average",
    "loopstream.models.augment",
    "loopstream.models.losses",
    "loopstream.models.training_run",
    "loopstream.models.targets",
    "loopstream.client.backpressure",
    "loopstream.client.shadow",
    "loopstream.serving.instance_merge",
    "loopstream.core.imaging",
    "loopstream.core.ellipses",
    "loopstream.core.simulator",
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
