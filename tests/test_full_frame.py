"""Whole-frame tiles for the fully convolutional U-Net (``stride_px``): the same loops as the
512 px tiles, through a real tritonserver serving both versions of the shipped network, on
frames of any shape (each side as it is, no square or stride padding)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from loopstream.client.shadow import agreement
from loopstream.core.imaging import Tile
from loopstream.core.simulator import SimulatedMicroscope, SimulationConfig
from loopstream.serving.pipelines import Pipeline, PipelineSpec
from loopstream.serving.triton import REPOSITORY
from tests.conftest import CORE_MODEL, default_version, infer_detections, served_versions

PIPELINE = "loops_semantic"
SHIPPED = PipelineSpec.read(REPOSITORY / PIPELINE / default_version(PIPELINE) / "pipeline.json")
TILED = PipelineSpec(**{**SHIPPED.__dict__, "tile_px": 512, "stride_px": 0})


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory):
    """Version 1: 512 px tiles with 64 px overlap (until now); version 2: the shipped settings."""
    assert SHIPPED.stride_px == 1 and SHIPPED.tile_px >= 2048, "the shipped U-Net runs on whole frames"
    yield from served_versions(tmp_path_factory.mktemp("full_frame"), PIPELINE, (TILED, SHIPPED), CORE_MODEL)


@pytest.mark.parametrize(
    ("shape", "tiles"),
    [
        ((1024, 1024), 1),
        ((600, 1000), 1),
        ((710, 1120), 1),  # the real FeCrAl video's frames
        ((2560, 1024), 2),  # two tiles of 1312 x 1024, 64 px overlap
    ],
    ids=["1024x1024", "600x1000", "710x1120", "2560x1024"],
)
@pytest.mark.triton
def test_whole_frame_finds_the_loops_of_512_px_tiles(url, shape, tiles):
    """A frame's edges are the edges of the network's input, as in the 512 px tiles: a band of
    padding beyond them makes the network find loops cut by the frame edge that the tiles ignore
    (F1 0.974 on 600 x 1000 padded to the stride of 32, 0.990 on 710 x 1120, 1.000 unpadded)."""
    frame = SimulatedMicroscope(SimulationConfig(shape=shape, initial_loops=16), seed=shape[0]).render(2)
    prepared = Pipeline(SHIPPED).prepare(frame)
    assert len(prepared.tiles) == tiles
    if tiles == 1:
        assert prepared.tiles_input.shape == (1, 1, *shape)
    tiled = infer_detections(url, PIPELINE, frame, "1")
    whole = infer_detections(url, PIPELINE, frame, "2")
    assert len(tiled) > 25
    match = agreement(tiled, whole)
    assert match.f1 >= 0.99, f"{match}"


def test_tiles_are_padded_only_to_the_stride_on_each_side():
    spec = PipelineSpec(tile_px=2048, overlap_px=64, stride_px=32)
    small = Pipeline(spec).prepare(np.zeros((300, 500), np.uint16))
    assert small.tiles == [Tile(0, 0, 320, 512)] and small.tiles_input.shape == (1, 1, 320, 512)
    fecral = Pipeline(spec).prepare(np.zeros((710, 1120), np.uint8))
    assert fecral.tiles_input.shape == (1, 1, 736, 1120)
    as_it_is = Pipeline(SHIPPED).prepare(np.zeros((710, 1120), np.uint8))  # the real FeCrAl frames
    assert as_it_is.tiles_input.shape == (1, 1, 710, 1120)
    large = Pipeline(spec).prepare(np.zeros((4096, 2048), np.uint8))
    assert large.tiles == [Tile(0, 0, 1408, 2048), Tile(1344, 0, 1408, 2048), Tile(2688, 0, 1408, 2048)]
    with pytest.raises(ValueError, match="stride_px 48 must be 0 or divide tile_px 2048"):
        PipelineSpec(tile_px=2048, stride_px=48)
    with pytest.raises(ValueError, match="overlap_px 512 must be at least 0 and below tile_px 512"):
        PipelineSpec(tile_px=512, overlap_px=512)


def test_the_shipped_network_takes_any_height_and_width():
    """The exported graph and the core config leave height and width free, each on its own."""
    graph = onnx.load(CORE_MODEL).graph
    dims = [[d.dim_param or d.dim_value for d in t.type.tensor_type.shape.dim] for t in graph.input]
    assert dims == [["n", 1, "height", "width"]]
    config = text_format.Parse(
        (REPOSITORY / f"{PIPELINE}_core" / "config.pbtxt").read_text(), mc.ModelConfig()
    )
    assert [list(i.dims) for i in config.input] == [[1, -1, -1]] and config.max_batch_size > 0
