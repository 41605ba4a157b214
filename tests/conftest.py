"""Shared fixtures: a real local stack (tritonserver + tracker processes on 127.0.0.1)."""

from __future__ import annotations

import pytest

from loopstream.serving.triton import REPOSITORY
from loopstream.stack import LocalStack

CORE_MODEL = REPOSITORY / "loops_semantic_core" / "1" / "model.onnx"


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory):
    """One local stack for the tests that only stream through it."""
    assert CORE_MODEL.exists(), f"{CORE_MODEL} is missing: the shipped model must be committed"
    with LocalStack(tmp_path_factory.mktemp("stack")) as running:
        yield running
