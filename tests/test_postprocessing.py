"""The semantic pipeline's fast post-processing (``loops_from_logits`` on a ``Mosaic``) gives the
detections and masks of the obvious full-frame path (stitch the whole frame, sigmoid, label with
scipy, watershed the whole frame with scikit-image, one ellipse per region), loop for loop, in the
same order, bit for bit: on the shipped U-Net's answers for real and simulated frames, and on
synthetic logits built to reach every branch (touching loops, diagonal-only links, loops without
a core, pixels within a hair of the threshold, seams whose tiles disagree)."""

from __future__ import annotations

import cv2
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from loopstream.core.ellipses import (
    detections_from_labels,
    labels_from_probability,
    loops_from_logits,
    mask_crops,
    probability,
)
from loopstream.core.imaging import Mosaic, Tile, stitch, tile_grid
from loopstream.core.simulator import SimulatedMicroscope, SimulationConfig
from loopstream.models.predict import onnx_logits
from loopstream.serving.pipelines import Pipeline, PipelineSpec
from loopstream.serving.triton import REPOSITORY
from tests.conftest import CORE_MODEL, default_version

SAMPLES = sorted((REPOSITORY.parent / "loopstream" / "data" / "samples").glob("*.png"))
SHIPPED = PipelineSpec.read(
    REPOSITORY / "loops_semantic" / default_version("loops_semantic") / "pipeline.json"
)


def full_frame_loops(tile_logits: np.ndarray, tiles: list[Tile], shape, threshold: float, min_area_px: int):
    """The reference: every step on the whole frame, as evaluation does it."""
    p = probability(stitch(tile_logits, tiles, shape))
    labels = labels_from_probability(p[0], p[1], threshold=threshold, min_area_px=min_area_px)
    return detections_from_labels(labels, p[0]), mask_crops(labels)


def assert_same_loops(tile_logits: np.ndarray, tiles: list[Tile], shape, threshold: float, min_area_px: int):
    expected, expected_masks = full_frame_loops(tile_logits, tiles, shape, threshold, min_area_px)
    got, masks = loops_from_logits(
        Mosaic(list(tile_logits), tiles, shape), threshold, min_area_px, with_masks=True
    )
    assert len(expected) > 0
    pd.testing.assert_frame_equal(got, expected, check_exact=True)
    assert [(m.x0, m.y0) for m in masks] == [(m.x0, m.y0) for m in expected_masks]
    assert all(np.array_equal(a.mask, b.mask) for a, b in zip(masks, expected_masks, strict=True))
    return got


@pytest.fixture(scope="module")
def unet():
    return onnx_logits(CORE_MODEL, threads=2)


def network_logits(unet, frame: np.ndarray, spec: PipelineSpec):
    pipeline = Pipeline(spec)
    prepared = pipeline.prepare(frame)
    return np.concatenate([unet(inputs["image"]) for inputs in pipeline.core_inputs(prepared)]), prepared


@pytest.mark.parametrize("sample", SAMPLES, ids=lambda p: p.stem)
def test_real_frames_give_the_full_frame_loops(unet, sample):
    """The bundled real creme images (512², one tile) at the shipped settings."""
    frame = np.asarray(Image.open(sample).convert("L"), np.uint8)
    logits, prepared = network_logits(unet, frame, SHIPPED)
    assert_same_loops(logits, prepared.tiles, prepared.shape, SHIPPED.threshold, SHIPPED.min_area_px)


def test_simulated_tiled_frame_gives_the_full_frame_loops(unet):
    """A simulated 1024² frame in 256 px tiles: loops on seams, the shipped network's logits."""
    spec = PipelineSpec(**{**SHIPPED.__dict__, "tile_px": 256, "overlap_px": 32})
    frame = SimulatedMicroscope(SimulationConfig(shape=(1024, 1024), n_frames=10), seed=3).render(4)
    logits, prepared = network_logits(unet, frame, spec)
    assert len(prepared.tiles) == 25
    got = assert_same_loops(logits, prepared.tiles, prepared.shape, spec.threshold, spec.min_area_px)
    assert len(got) > 30


def synthetic_tile_logits(shape, tiles: list[Tile], seed: int) -> np.ndarray:
    """Logits of ellipses (cores in their middle), many touching, some without a core; noisy so
    that edges are ragged and specks link diagonally; each tile with noise of its own."""
    rng = np.random.default_rng(seed)
    h, w = shape
    fg = np.full(shape, -4.0, np.float32)
    core = np.full(shape, -4.0, np.float32)
    for _ in range(140):
        x, y = float(rng.uniform(0, w)), float(rng.uniform(0, h))
        a = float(rng.uniform(4, 16))
        b = a * float(rng.uniform(0.5, 1.0))
        angle = float(rng.uniform(0, 180))
        cv2.ellipse(fg, ((x, y), (2 * a, 2 * b), angle), 4.0, -1)
        if rng.random() < 0.8:  # a fifth of the loops have no core: their component is one loop
            cv2.ellipse(core, ((x, y), (a, b), angle), 4.0, -1)
    maps = np.stack([fg, core])
    out = np.zeros((len(tiles), 2, tiles[0].height, tiles[0].width), np.float32)
    for i, t in enumerate(tiles):
        patch = maps[:, t.y0 : t.y0 + t.height, t.x0 : t.x0 + t.width]
        out[i, :, : patch.shape[1], : patch.shape[2]] = patch
    out += rng.normal(0.0, 2.5, out.shape).astype(np.float32)
    # Pixels within float32 rounding of the threshold's logit (0.3), both sides.
    cut = np.float32(np.log(0.3 / 0.7))
    near = rng.random(out.shape) < 0.02
    out[near] = cut + rng.integers(-3, 4, int(near.sum())).astype(np.float32) * np.spacing(cut)
    return out


@pytest.mark.parametrize(
    ("seed", "tile_px", "multiple_px"), [(0, 256, 0), (1, 256, 0), (2, 256, 0), (3, 384, 16)]
)
def test_synthetic_logits_give_the_full_frame_loops(seed, tile_px, multiple_px):
    shape = (700, 900)
    tiles = tile_grid(shape, tile_px, 32, multiple_px)
    logits = synthetic_tile_logits(shape, tiles, seed)
    got = assert_same_loops(logits, tiles, shape, threshold=0.3, min_area_px=12)
    assert len(got) > 80


def test_loops_inside_holes_and_boxes_of_others_are_their_own():
    """A ring loop with a loop inside its hole, and a neighbour reaching into its box: each box
    holds pixels of other components, which must not join its loop."""
    shape = (96, 128)
    fg = np.full(shape, -6.0, np.float32)
    cv2.circle(fg, (40, 48), 24, 6.0, -1)
    cv2.circle(fg, (40, 48), 14, -6.0, -1)  # the hole
    cv2.circle(fg, (40, 48), 5, 6.0, -1)  # a loop inside it
    cv2.circle(fg, (72, 20), 9, 6.0, -1)  # a neighbour whose box overlaps the ring's
    core = np.full(shape, -6.0, np.float32)
    for x, y in ((40, 26), (40, 48), (72, 20)):
        cv2.circle(core, (x, y), 2, 6.0, -1)
    tiles = tile_grid(shape, 128, 16)
    got = assert_same_loops(np.stack([fg, core])[None], tiles, shape, threshold=0.3, min_area_px=12)
    assert len(got) == 3


@pytest.mark.parametrize(
    ("tile_px", "multiple_px", "tile_shape"), [(128, 0, (128, 128)), (256, 16, (160, 256))]
)
def test_mosaic_takes_each_pixel_from_the_tile_whose_centre_is_nearest(tile_px, multiple_px, tile_shape):
    """Independent of the seam arithmetic: each tile's map holds its own index (square tiles, and
    the non-square ones of a network with a stride)."""
    shape = (300, 700)
    tiles = tile_grid(shape, tile_px, 20, multiple_px)
    assert (tiles[0].height, tiles[0].width) == tile_shape
    maps = np.stack([np.full((1, *tile_shape), i, np.float32) for i in range(len(tiles))])
    stitched = stitch(maps, tiles, shape)[0].astype(int)
    rows, cols = np.mgrid[0 : shape[0], 0 : shape[1]] + 0.5  # pixel centres
    for along, starts, side in (
        (rows, [t.y0 for t in tiles], tile_shape[0]),
        (cols, [t.x0 for t in tiles], tile_shape[1]),
    ):
        distance = np.abs(along[None] - (np.array(starts)[:, None, None] + side / 2))
        assert np.array_equal(np.take_along_axis(distance, stitched[None], 0)[0], distance.min(axis=0))
    mosaic = Mosaic(list(maps), tiles, shape)
    assert np.array_equal(mosaic.crop(slice(100, 250), slice(90, 610), channel=0), stitched[100:250, 90:610])
    assert np.array_equal(mosaic.select(0, lambda m: m >= 3), stitched >= 3)


def test_bad_settings_are_clear_errors():
    tiles = tile_grid((64, 64), 64, 8)
    with pytest.raises(ValueError, match="2 tile maps for 1 tiles"):
        Mosaic([np.zeros((2, 64, 64), np.float32)] * 2, tiles, (64, 64))
    mosaic = Mosaic([np.zeros((2, 64, 64), np.float32)], tiles, (64, 64))
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        loops_from_logits(mosaic, threshold=1.0)
