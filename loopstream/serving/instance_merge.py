"""The instance-segmentation (Mask R-CNN) pipeline: frame in, loop detections out.

Like ``loopstream.serving.semantic`` it is split around the core model call: ``prepare_frame``
standardises the whole frame (``loopstream.core.imaging.standardise``) and cuts tiles of at most
512 px overlapping by at least the spec's ``overlap_px`` (``loopstream.core.imaging.tile_grid``);
the core model (``loopstream.models.maskrcnn.SingleImageExport``, one tile per
call) returns per tile ``boxes`` [K, 4] (tile px), ``scores`` [K] and ``mask_probs`` [K, 28, 28];
``frame_detections`` merges them into one table with ``loopstream.core.detections.LOOP_COLUMNS``.

Merging, so that a loop is found once and whole:

1. A tile keeps only the detections whose box centre lies in the part of the frame it owns
   (split at the middle of each overlap, the seams of ``loopstream.core.imaging.stitch``). A loop cut
   by a tile edge is seen whole by the neighbour that owns its centre; the cut copy's box centre
   sits on the far side of the seam for any loop up to the overlap across (so the overlap is at
   least the largest loop's box: 96 px in the default version, whose network's largest box on
   creme-ds25s is 92 px).
2. Greedy mask-IoU NMS over the whole frame after the tiles are merged (highest score first,
   IoU > the spec's ``nms_iou`` suppressed): one loop, one detection. It removes duplicates that
   survive the network's box NMS within a tile, and what step 1 cannot: a loop whose box centre
   jitters across a seam between two tiles' views, or a cut copy of a loop larger than the
   overlap (it covers > overlap / D of the loop).

Masks are pasted detectron2's way (``paste_mask``): bilinear sampling of the 28 x 28
probabilities at pixel centres inside the box (``grid_sample``, ``align_corners=False``, zero
outside), within the box grown by 1 px, then ``>= 0.5``. Each instance's ellipse is
``loopstream.core.ellipses.ellipse_of_contour`` of its largest outer contour. Every threshold
(score, mask, NMS IoU, minimum area) is the version's ``PipelineSpec`` (``pipeline.json``).

Examples
--------
>>> import numpy as np
>>> from loopstream.serving.frames import prepare_frame
>>> from loopstream.serving.spec import PipelineSpec
>>> config = PipelineSpec(family="instance", tile_px=256, overlap_px=32)
>>> prepared = prepare_frame(np.zeros((300, 400), np.uint16), config.tile_px, config.overlap_px)
>>> prepared.tiles_input.shape
(4, 1, 256, 256)
>>> probs = np.ones((1, 28, 28), np.float32)
>>> hit = TileDetections(np.array([[10.0, 20.0, 30.0, 30.0]]), np.array([0.9]), probs)
>>> none = TileDetections(np.zeros((0, 4)), np.zeros(0), np.zeros((0, 28, 28)))
>>> det = frame_detections([hit, none, none, none], prepared, config)
>>> det[["x_px", "y_px", "bbox_width_px", "bbox_height_px"]].round(1).values.tolist()
[[19.5, 24.5, 20.0, 10.0]]
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import cv2
import numpy as np
import pandas as pd

from loopstream.core.detections import LOOP_COLUMNS
from loopstream.core.ellipses import ellipse_of_contour, empty_detections
from loopstream.core.imaging import Tile, seam_bounds
from loopstream.serving.frames import PreparedFrame

if TYPE_CHECKING:
    from loopstream.serving.spec import PipelineSpec


@dataclass(frozen=True)
class TileDetections:
    """The core model's output for one tile (tile px, best score first as the model sorts)."""

    boxes: np.ndarray  # [K, 4] float: x0, y0, x1, y1
    scores: np.ndarray  # [K]
    mask_probs: np.ndarray  # [K, M, M] loop probability inside the box

    @classmethod
    def from_outputs(cls, outputs: dict[str, np.ndarray]) -> TileDetections:
        """From the exported network's named outputs (``boxes``, ``scores``, ``mask_probs``)."""
        return cls(outputs["boxes"], outputs["scores"], outputs["mask_probs"])


@dataclass(frozen=True)
class Instance:
    """One loop in frame px: its binary mask on the window starting at (y0, x0)."""

    score: float
    y0: int
    x0: int
    mask: np.ndarray  # bool [h, w], tight around the loop

    @property
    def window(self) -> tuple[int, int, int, int]:
        """(y0, x0, y1, x1), end exclusive."""
        return self.y0, self.x0, self.y0 + self.mask.shape[0], self.x0 + self.mask.shape[1]


def _bilinear_weights(start: int, stop: int, lo: float, hi: float, m: int) -> np.ndarray:
    """[stop - start, m] weights sampling m mask cells at pixel centres start+0.5 ... of a box
    [lo, hi) (``grid_sample``, ``align_corners=False``, zero padding)."""
    centres = np.arange(start, stop, dtype=np.float64) + 0.5
    s = (centres - lo) / max(hi - lo, 1e-6) * m - 0.5  # position in mask cells
    i0 = np.floor(s).astype(np.int64)
    f = s - i0
    w = np.zeros((len(s), m + 2))  # cells -1 .. m: the padding holds the zeros outside
    rows = np.arange(len(s))
    w[rows, np.clip(i0 + 1, 0, m + 1)] += 1.0 - f
    w[rows, np.clip(i0 + 2, 0, m + 1)] += f
    return w[:, 1 : m + 1]


def paste_mask(
    probs: np.ndarray, box: np.ndarray, shape: tuple[int, int], threshold: float = 0.5
) -> tuple[int, int, np.ndarray]:
    """Binary mask of a box's [M, M] probabilities in an image of ``shape``, detectron2's rule:
    returns (y0, x0, mask) with the mask on the window [floor(y0) - 1, ceil(y1) + 1) x ... clipped
    to the image."""
    h, w = shape
    bx0, by0, bx1, by1 = (float(v) for v in box)
    x0, y0 = max(int(np.floor(bx0)) - 1, 0), max(int(np.floor(by0)) - 1, 0)
    x1, y1 = min(int(np.ceil(bx1)) + 1, w), min(int(np.ceil(by1)) + 1, h)
    if x1 <= x0 or y1 <= y0:
        return y0, x0, np.zeros((0, 0), bool)
    m = probs.shape[0]
    wy = _bilinear_weights(y0, y1, by0, by1, m)
    wx = _bilinear_weights(x0, x1, bx0, bx1, probs.shape[1])
    return y0, x0, (wy @ probs.astype(np.float64) @ wx.T) >= threshold


def owned_regions(tiles: Sequence[Tile], shape: tuple[int, int]) -> list[tuple[int, int, int, int]]:
    """(r0, c0, r1, c1) of the frame each tile owns: cut at the middle of every overlap."""

    def seams(starts: list[int], size: int, length: int) -> dict[int, tuple[int, int]]:
        bounds = seam_bounds(starts, size, length)
        return dict(zip(starts, itertools.pairwise(bounds), strict=True))

    rows = seams(sorted({t.y0 for t in tiles}), tiles[0].height, shape[0])
    cols = seams(sorted({t.x0 for t in tiles}), tiles[0].width, shape[1])
    regions = []
    for t in tiles:
        (r0, r1), (c0, c1) = rows[t.y0], cols[t.x0]
        regions.append((r0, c0, r1, c1))
    return regions


def tile_instances(
    detections: TileDetections,
    tile: Tile,
    owned: tuple[int, int, int, int],
    shape: tuple[int, int],
    config: PipelineSpec,
) -> list[Instance]:
    """The loops of one tile whose box centre lies in the tile's owned region, in frame px."""
    r0, c0, r1, c1 = owned
    visible = (min(tile.height, shape[0] - tile.y0), min(tile.width, shape[1] - tile.x0))
    out = []
    for box, score, probs in zip(detections.boxes, detections.scores, detections.mask_probs, strict=True):
        cx, cy = tile.x0 + (box[0] + box[2]) / 2, tile.y0 + (box[1] + box[3]) / 2
        if score < config.threshold or not (r0 <= cy < r1 and c0 <= cx < c1):
            continue
        y0, x0, mask = paste_mask(probs, box, visible, config.mask_threshold)
        if np.count_nonzero(mask) < config.min_area_px:
            continue
        ys, xs = np.nonzero(mask)
        tight = mask[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
        out.append(Instance(float(score), tile.y0 + y0 + int(ys.min()), tile.x0 + x0 + int(xs.min()), tight))
    return out


def mask_iou(a: Instance, b: Instance) -> float:
    ay0, ax0, ay1, ax1 = a.window
    by0, bx0, by1, bx1 = b.window
    y0, x0, y1, x1 = max(ay0, by0), max(ax0, bx0), min(ay1, by1), min(ax1, bx1)
    if y1 <= y0 or x1 <= x0:
        return 0.0
    inter = np.count_nonzero(
        a.mask[y0 - ay0 : y1 - ay0, x0 - ax0 : x1 - ax0] & b.mask[y0 - by0 : y1 - by0, x0 - bx0 : x1 - bx0]
    )
    return inter / (np.count_nonzero(a.mask) + np.count_nonzero(b.mask) - inter)


def suppress_duplicates(instances: Sequence[Instance], iou: float) -> list[Instance]:
    """Greedy mask-IoU NMS: best score first, drop any instance overlapping a kept one by > ``iou``."""
    kept: list[Instance] = []
    windows = np.zeros((0, 4), np.int64)
    for inst in sorted(instances, key=lambda i: -i.score):
        y0, x0, y1, x1 = inst.window
        near = np.nonzero(
            (windows[:, 0] < y1) & (windows[:, 2] > y0) & (windows[:, 1] < x1) & (windows[:, 3] > x0)
        )[0]
        if all(mask_iou(inst, kept[j]) <= iou for j in near):
            kept.append(inst)
            windows = np.vstack([windows, inst.window])
    return kept


def frame_instances(
    tile_outputs: Sequence[TileDetections], prepared: PreparedFrame, config: PipelineSpec
) -> list[Instance]:
    """The loops of a frame from its tiles' model outputs (order of ``prepared.tiles``)."""
    owned = owned_regions(prepared.tiles, prepared.shape)
    candidates = [
        inst
        for det, tile, region in zip(tile_outputs, prepared.tiles, owned, strict=True)
        for inst in tile_instances(det, tile, region, prepared.shape, config)
    ]
    return suppress_duplicates(candidates, config.nms_iou)


def detections_from_instances(instances: Sequence[Instance]) -> pd.DataFrame:
    """One ``LOOP_COLUMNS`` row per instance: ellipse of its largest outer contour, mask
    area and tight bbox (px), box score."""
    rows = []
    for inst in instances:
        contours, _ = cv2.findContours(inst.mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        x, y, major, minor, angle = ellipse_of_contour(max(contours, key=len))
        h, w = inst.mask.shape
        area = float(np.count_nonzero(inst.mask))
        rows.append((inst.score, x + inst.x0, y + inst.y0, major, minor, angle, area, inst.x0, inst.y0, w, h))
    if not rows:
        return empty_detections()
    return pd.DataFrame(rows, columns=LOOP_COLUMNS).astype(np.float32)


def label_instances(instances: Sequence[Instance], shape: tuple[int, int]) -> np.ndarray:
    """Label image (int32, 0 = background, i + 1 = ``instances[i]``); where masks overlap the
    higher score wins. For metrics that count pixels (F, mask IoU matching)."""
    labels = np.zeros(shape, np.int32)
    for i in sorted(range(len(instances)), key=lambda i: instances[i].score):
        y0, x0, y1, x1 = instances[i].window
        labels[y0:y1, x0:x1][instances[i].mask] = i + 1
    return labels


def frame_detections(
    tile_outputs: Sequence[TileDetections], prepared: PreparedFrame, config: PipelineSpec
) -> pd.DataFrame:
    """Detections (``loopstream.core.detections.LOOP_COLUMNS``) of a frame from its tiles' outputs."""
    return detections_from_instances(frame_instances(tile_outputs, prepared, config))
