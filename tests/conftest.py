"""Shared fixtures and paths: a real local stack (tritonserver + tracker processes on 127.0.0.1),
the shipped repository's default versions, the creme-ds25s sample beside the repository."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from loopstream.serving import repository
from loopstream.serving.triton import REPOSITORY
from loopstream.stack import LocalStack

ROOT = Path(__file__).resolve().parents[1]
CREME = (
    Path(os.environ.get("LOOPSTREAM_DATA", ROOT.parent / "shared" / "data"))
    / "creme-ds25s"
    / "train"
    / "annotations.json"
)
CREME_IMAGE = CREME.parent / "imgs" / "3.png"  # a real bright-field frame, 512 x 512


def default_version(pipeline: str) -> str:
    """The shipped pipeline version a request naming none gets, as a path segment."""
    return str(repository.default_version(REPOSITORY, pipeline))


CORE_MODEL = REPOSITORY / "loops_semantic_core" / default_version("loops_semantic") / "model.onnx"


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory):
    """One local stack for the tests that only stream through it."""
    assert CORE_MODEL.exists(), f"{CORE_MODEL} is missing: the shipped model must be committed"
    with LocalStack(tmp_path_factory.mktemp("stack")) as running:
        yield running
