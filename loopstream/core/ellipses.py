"""From per-pixel loop probabilities to compact loop detections (ellipses).

Semantic models end here, and so do evaluation and ground truth: one definition of a loop's size
for the whole system. The size of a loop is the ellipse OpenCV's ``fitEllipse`` fits to its
outer contour (the reference work's definition): full major axis D, full minor axis Dm, in px.

Examples
--------
>>> import numpy as np, cv2
>>> mask = np.zeros((64, 64), np.uint8)
>>> _ = cv2.ellipse(mask, (32, 30), (12, 6), 30, 0, 360, 1, -1)
>>> det = detections_from_labels(mask.astype(np.int32))
>>> round(float(det.major_px[0])), round(float(det.minor_px[0])), round(float(det.x_px[0]))
(24, 12, 32)
"""

from __future__ import annotations

import cv2
import numpy as np
import pandas as pd
from scipy import ndimage
from skimage.segmentation import watershed

from loopstream.core.detections import LOOP_COLUMNS
from loopstream.core.masks import MaskCrop


def empty_detections() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype=np.float32) for c in LOOP_COLUMNS})


def labels_from_probability(
    foreground: np.ndarray,
    core: np.ndarray | None = None,
    threshold: float = 0.5,
    min_area_px: int = 12,
) -> np.ndarray:
    """Label image (int32, 0 = background) of the loops in a probability map.

    ``foreground`` is P(pixel inside a loop); ``core`` (optional) is P(pixel in a loop's shrunken
    centre). Cores seed a watershed of the foreground, so two touching loops stay two loops.
    Regions smaller than ``min_area_px`` are noise at the scales we image and are dropped.
    """
    mask = foreground >= threshold
    components, n = ndimage.label(mask, structure=np.ones((3, 3)))
    if core is not None and n > 0:
        seeds, n_seeds = ndimage.label((core >= threshold) & mask, structure=np.ones((3, 3)))
        # A loop whose core was missed still gets a seed: its whole component.
        seeded = np.zeros(n + 1, bool)
        seeded[np.unique(components[seeds > 0])] = True
        unseeded = ~seeded[components] & mask
        seeds = np.where(unseeded, components + n_seeds, seeds)
        components = watershed(-foreground, seeds, mask=mask)
    areas = np.bincount(components.ravel())
    keep = areas >= min_area_px
    keep[0] = False
    remap = np.zeros(areas.size, np.int32)
    remap[keep] = np.arange(1, int(keep.sum()) + 1)
    return remap[components]


def detections_from_labels(labels: np.ndarray, score_map: np.ndarray | None = None) -> pd.DataFrame:
    """One row per labelled region: ellipse (centre, full axes, angle), area and bbox in px.

    ``score`` is the mean of ``score_map`` over the region (1.0 without a map).
    """
    n = int(labels.max())
    if n == 0:
        return empty_detections()
    rows = []
    for label, (ys, xs) in _region_slices(labels):
        region = (labels[ys, xs] == label).astype(np.uint8)
        area = float(region.sum())
        if area == 0:
            continue
        contours, _ = cv2.findContours(region, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        contour = max(contours, key=len)
        x, y, major, minor, angle = ellipse_of_contour(contour)
        score = 1.0 if score_map is None else float(score_map[ys, xs][region > 0].mean())
        rows.append(
            (
                score,
                x + xs.start,
                y + ys.start,
                major,
                minor,
                angle,
                area,
                float(xs.start),
                float(ys.start),
                float(xs.stop - xs.start),
                float(ys.stop - ys.start),
            )
        )
    if not rows:
        return empty_detections()
    return pd.DataFrame(rows, columns=LOOP_COLUMNS).astype(np.float32)


def mask_crops(labels: np.ndarray) -> list[MaskCrop]:
    """Each labelled region's mask within its bounding box, in the row order of ``detections_from_labels``."""
    return [
        MaskCrop(xs.start, ys.start, labels[ys, xs] == label) for label, (ys, xs) in _region_slices(labels)
    ]


def ellipse_of_contour(contour: np.ndarray) -> tuple[float, float, float, float, float]:
    """(x, y, major, minor, angle_deg) of a contour; full axes, angle of the major axis from +x.

    The ellipse is ``cv2.fitEllipse``'s. A contour it cannot fit (``ellipse_fit_is_degenerate``:
    fewer than 5 points, collinear, a non-finite or absurdly long fit) is measured by its
    minimum-area rectangle instead: axes its sides + 1 px (pixels have extent), angle its angle.

    >>> line = np.array([[[x, 3]] for x in range(10)], np.int32)  # collinear: fitEllipse gives NaN
    >>> [round(v, 1) for v in ellipse_of_contour(line)]
    [4.5, 3.0, 10.0, 1.0, 0.0]
    """
    if not ellipse_fit_is_degenerate(contour):
        (x, y), (w, h), angle = cv2.fitEllipse(contour)
        w, h = max(w, 1.0), max(h, 1.0)  # a one-pixel-wide region still has a width of one pixel
        return _major_first(x, y, w, h, angle)
    (x, y), (w, h), angle = cv2.minAreaRect(contour.reshape(-1, 1, 2).astype(np.float32))
    return _major_first(x, y, w + 1.0, h + 1.0, angle)


def ellipse_fit_is_degenerate(contour: np.ndarray) -> bool:
    """True when ``cv2.fitEllipse`` gives no honest ellipse for the contour: fewer than 5 points,
    all points on one line, or a fit that is not finite or whose major axis exceeds twice the
    points' own longest extent + 1 px (a near-collinear contour fits axes of thousands of px)."""
    points = contour.reshape(-1, 2).astype(np.float64)
    if len(points) < 5:
        return True
    centred = points - points.mean(axis=0)
    if np.linalg.matrix_rank(centred, tol=1e-6) < 2:
        return True
    _, (w, h), _ = cv2.fitEllipse(contour.reshape(-1, 1, 2).astype(np.float32))
    extent = float(np.hypot(*np.ptp(points, axis=0))) + 1.0
    return not (np.isfinite(w) and np.isfinite(h)) or max(w, h) > 2.0 * extent


def _major_first(
    x: float, y: float, w: float, h: float, angle: float
) -> tuple[float, float, float, float, float]:
    if w >= h:
        return float(x), float(y), float(w), float(h), float(angle % 180.0)
    return float(x), float(y), float(h), float(w), float((angle + 90.0) % 180.0)


def _region_slices(labels: np.ndarray):
    """(label, (row slice, column slice)) of each non-empty region."""
    for index, box in enumerate(ndimage.find_objects(labels)):
        if box is not None:
            yield index + 1, box
