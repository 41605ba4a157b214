"""The modules documented by example keep their examples (pytest runs them: --doctest-modules)."""

import doctest
import importlib

import pytest

MODULES = [
    "loopstream.core.detections",
    "loopstream.core.ellipses",
    "loopstream.core.imaging",
    "loopstream.core.masks",
    "loopstream.core.measures",
    "loopstream.core.plausibility",
    "loopstream.core.simulator",
    "loopstream.client.backpressure",
    "loopstream.client.shadow",
    "loopstream.client.sources",
    "loopstream.models.architectures",
    "loopstream.models.augment",
    "loopstream.models.average",
    "loopstream.models.losses",
    "loopstream.models.maskrcnn",
    "loopstream.models.targets",
    "loopstream.models.training_run",
    "loopstream.ops.pool",
    "loopstream.ops.rollout_cli",
    "loopstream.serving.core_models",
    "loopstream.serving.frames",
    "loopstream.serving.instance_merge",
    "loopstream.serving.admin",
    "loopstream.serving.leftovers",
    "loopstream.serving.pipelines",
    "loopstream.serving.semantic",
    "loopstream.serving.triton",
    "loopstream.tracker.rollout",
    "loopstream.tracker.statistics",
    "loopstream.tracker.validation",
]


@pytest.mark.parametrize("name", MODULES)
def test_module_keeps_its_examples(name: str) -> None:
    examples = sum(len(t.examples) for t in doctest.DocTestFinder().find(importlib.import_module(name)))
    assert examples > 0, f"{name} lost its docstring examples; they are its executable documentation"
