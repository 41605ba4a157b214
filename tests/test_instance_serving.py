"""Instance pipeline merging: tiles of a large frame give the loops of the untiled frame.

The core model is replaced by an oracle that finds bright blobs in whatever tile it is given
(connected components, 28 x 28 mask resampled over each box, as Mask R-CNN's outputs look), so
loops cut by a tile edge really are reported cut by that tile, and merging has to get them right.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from loopstream.core import measures
from loopstream.core.detections import LOOP_COLUMNS
from loopstream.core.imaging import tile_grid
from loopstream.serving.frames import prepare_frame
from loopstream.serving.instance_merge import (
    TileDetections,
    frame_instances,
    label_instances,
    owned_regions,
    suppress_duplicates,
    tile_instances,
)
from loopstream.serving.pipelines import Pipeline
from loopstream.serving.spec import PipelineSpec

FRAME_PX = 2048


def blob_oracle(x: np.ndarray) -> TileDetections:
    """Bright connected regions of a standardised image [1, 1, H, W] as Mask R-CNN outputs."""
    fg = (x[0, 0] > 0).astype(np.uint8)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(fg, connectivity=8)
    boxes, probs = [], []
    for i in range(1, n):
        bx, by, bw, bh, _ = stats[i]
        crop = (labels[by : by + bh, bx : bx + bw] == i).astype(np.float32)
        probs.append(cv2.resize(crop, (28, 28), interpolation=cv2.INTER_LINEAR))
        boxes.append([bx, by, bx + bw, by + bh])
    return TileDetections(
        np.array(boxes, np.float32).reshape(-1, 4),
        np.full(len(boxes), 0.9, np.float32),
        np.array(probs, np.float32).reshape(-1, 28, 28),
    )


@pytest.fixture(scope="module")
def frame() -> tuple[np.ndarray, int]:
    """A uint16 frame of separated bright elliptical loops, 10-60 px, many across tile seams."""
    rng = np.random.default_rng(3)
    image = np.full((FRAME_PX, FRAME_PX), 1000, np.uint16)
    placed: list[tuple[float, float, float]] = []
    seams = [t.x0 for t in tile_grid((FRAME_PX, FRAME_PX), 512, 64)][1:5]
    while len(placed) < 160:
        major = rng.uniform(10, 60)
        # half of the loops sit on a tile overlap, where merging is tested
        x = rng.choice(seams) + rng.uniform(0, 64) if len(placed) % 2 else rng.uniform(0, FRAME_PX)
        y = rng.uniform(0, FRAME_PX)
        if any(np.hypot(x - px, y - py) < (major + pm) / 2 + 4 for px, py, pm in placed):
            continue
        placed.append((x, y, major))
        axes = (round(major / 2), round(major * rng.uniform(0.3, 0.5)))
        cv2.ellipse(image, (round(x), round(y)), axes, float(rng.uniform(0, 180)), 0, 360, 3000, -1)
    n_loops = cv2.connectedComponents((image > 1000).astype(np.uint8), connectivity=8)[0] - 1
    return image, n_loops


def instance_spec(**settings) -> PipelineSpec:
    return PipelineSpec(family="instance", min_area_px=6, **settings)


def oracle_core(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``blob_oracle`` behind the core network's interface (one tile per request)."""
    found = blob_oracle(inputs["image"])
    return {"boxes": found.boxes, "scores": found.scores, "mask_probs": found.mask_probs}


def instances_of(image: np.ndarray, config: PipelineSpec):
    prepared = prepare_frame(image, config.tile_px, config.overlap_px)
    outputs = [blob_oracle(prepared.tiles_input[i : i + 1]) for i in range(len(prepared.tiles))]
    return frame_instances(outputs, prepared, config)


def test_tiled_frame_gives_the_loops_of_the_untiled_frame(frame):
    image, n_loops = frame
    untiled = instances_of(image, instance_spec(tile_px=FRAME_PX))
    tiled = instances_of(image, instance_spec(tile_px=512, overlap_px=64))
    assert len(untiled) == n_loops
    assert len(tiled) == n_loops  # nothing lost, nothing duplicated at the borders
    truth = label_instances(untiled, image.shape)
    scores = measures.match_loops(
        label_instances(tiled, image.shape), [truth == i + 1 for i in range(n_loops)]
    )
    assert scores.matched == n_loops  # each loop whole (IoU >= 0.5) exactly once


def test_detections_have_the_common_columns(frame):
    image, _ = frame
    det = Pipeline(instance_spec()).analyse(image[:700, :900], oracle_core)
    assert list(det.columns) == LOOP_COLUMNS and len(det) > 10
    assert (det.major_px >= det.minor_px).all() and det.area_px.min() >= 6


def test_owned_regions_partition_the_frame():
    shape = (1000, 1300)
    tiles = tile_grid(shape, 512, 64)
    cover = np.zeros(shape, np.int32)
    for r0, c0, r1, c1 in owned_regions(tiles, shape):
        cover[r0:r1, c0:c1] += 1
    assert (cover == 1).all()


def test_cut_copy_outside_the_owned_region_is_dropped():
    from loopstream.core.imaging import Tile

    config = instance_spec()
    probs = np.ones((1, 28, 28), np.float32)
    # a loop cut by the tile's right edge: its box centre (x = 500) is right of the seam at 480
    cut = TileDetections(np.array([[490.0, 100.0, 512.0, 140.0]]), np.array([0.9]), probs)
    assert tile_instances(cut, Tile(0, 0, 512, 512), (0, 0, 512, 480), (1024, 1024), config) == []
    kept = tile_instances(cut, Tile(0, 0, 512, 512), (0, 0, 512, 512), (1024, 1024), config)
    assert len(kept) == 1 and kept[0].mask.shape == (40, 22)


def test_mask_nms_keeps_the_best_of_overlapping_copies():
    from loopstream.serving.instance_merge import Instance

    disc = cv2.circle(np.zeros((21, 21), np.uint8), (10, 10), 10, 1, -1).astype(bool)
    a, b, c = Instance(0.9, 100, 100, disc), Instance(0.8, 102, 101, disc), Instance(0.7, 140, 100, disc)
    assert suppress_duplicates([b, c, a], 0.5) == [a, c]
