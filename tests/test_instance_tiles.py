"""Mask R-CNN on the fewest tiles that overlap enough (``stride_px``): the same loops as the
512 px tiles of version 3, through a real tritonserver serving both settings of its network; and
a ``zoom`` setting, which enlarges each frame before tiling and answers in the frame's own px."""

from __future__ import annotations

import json
from dataclasses import replace

import cv2
import numpy as np
import pandas as pd
import pytest

from loopstream.client.shadow import agreement
from loopstream.core.detections import LOOP_COLUMNS
from loopstream.core.imaging import Tile
from loopstream.core.simulator import SimulatedMicroscope, SimulationConfig
from loopstream.serving.pipelines import Pipeline, PipelineSpec, to_frame_px
from loopstream.serving.triton import REPOSITORY
from tests.conftest import CREME, SHEN_FRAMES, default_version, infer_detections, served_versions

PIPELINE = "loops_instance"
SHIPPED = PipelineSpec.read(REPOSITORY / PIPELINE / default_version(PIPELINE) / "pipeline.json")
SQUARE = PipelineSpec.read(REPOSITORY / PIPELINE / "3" / "pipeline.json")  # 512 px, 64 px overlap
NETWORK = REPOSITORY / f"{PIPELINE}_core" / "3" / "model.onnx"
FECRAL = SHEN_FRAMES / "frame0090.jpg"
ZOOMED = replace(SHIPPED, zoom=2.0)
LARGEST_PREDICTED_BOX_PX = 92  # v3 on the 12 creme-ds25s images (image 11)


def test_the_overlap_holds_the_largest_loop_whole():
    """A loop whose box centre a tile owns lies whole in that tile when the overlap is at least
    its box's side (``loopstream.serving.instance_merge``)."""
    assert SHIPPED.stride_px == 32 and SHIPPED.overlap_px >= LARGEST_PREDICTED_BOX_PX
    if CREME.exists():
        boxes = np.array([a["bbox"] for a in json.loads(CREME.read_text())["annotations"]])
        assert SHIPPED.overlap_px >= boxes[:, 2:].max()


def test_the_tile_grids():
    """A 2048 px frame keeps 25 tiles of 512 px (128 px overlap): fewer would overlap too little,
    smaller ones round up to 512 at the FPN's stride. Other frames get smaller tiles."""
    grid = {
        shape: Pipeline(SHIPPED).prepare(np.zeros(shape, np.uint8)).tiles
        for shape in [(2048, 2048), (1024, 1024), (710, 1120)]
    }
    assert grid[2048, 2048] == Pipeline(SQUARE).prepare(np.zeros((2048, 2048), np.uint8)).tiles
    assert len(grid[1024, 1024]) == 9 and grid[1024, 1024][-1] == Tile(608, 608, 416, 416)
    assert len(grid[710, 1120]) == 6 and grid[710, 1120][-1] == Tile(294, 672, 416, 448)


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory):
    """Version 1: v3's 512 px tiles with 64 px overlap; version 2: the shipped settings;
    version 3: the shipped settings with frames enlarged 2x."""
    yield from served_versions(
        tmp_path_factory.mktemp("instance_tiles"), PIPELINE, (SQUARE, SHIPPED, ZOOMED), NETWORK
    )


def _frame(name: str) -> np.ndarray:
    if name == "simulated 1024x1024":
        return SimulatedMicroscope(SimulationConfig(shape=(1024, 1024)), seed=5).frame(600).image
    if not FECRAL.exists():
        pytest.skip(f"no shen2021-fecral frame at {FECRAL}")
    return cv2.imread(str(FECRAL), cv2.IMREAD_GRAYSCALE).astype(np.uint16) * 256


@pytest.mark.triton
@pytest.mark.parametrize("name", ["simulated 1024x1024", "FeCrAl 710x1120"])
def test_fewer_pixels_find_the_loops_of_512_px_tiles(url, name):
    frame = _frame(name)
    square = infer_detections(url, PIPELINE, frame, "1")
    fitted = infer_detections(url, PIPELINE, frame, "2")
    assert len(square) > 30
    match = agreement(square, fitted)
    assert match.f1 >= 0.99, f"{match}"


@pytest.mark.triton
def test_a_zoomed_version_answers_in_frame_px_what_the_enlarged_frame_gives(url):
    frame = _frame("simulated 1024x1024")[:512, :512]
    enlarged = cv2.resize(frame, (1024, 1024), interpolation=cv2.INTER_LINEAR)
    zoomed = infer_detections(url, PIPELINE, frame, "3")
    expected = to_frame_px(
        pd.DataFrame(infer_detections(url, PIPELINE, enlarged, "2"), columns=LOOP_COLUMNS), 2.0
    )
    assert len(zoomed) >= 8
    assert zoomed[:, 1].max() < 512 and zoomed[:, 2].max() < 512, "centres in the frame's own px"
    match = agreement(expected, zoomed)
    assert match.f1 >= 0.99, f"{match}"
    assert agreement(infer_detections(url, PIPELINE, frame, "2"), zoomed).f1 < 0.99, "zoom should matter here"
