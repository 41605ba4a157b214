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

import math
from collections.abc import Iterator
from typing import NamedTuple

import cv2
import numpy as np
import pandas as pd
from scipy import ndimage
from skimage.segmentation import watershed

from loopstream.core.detections import LOOP_COLUMNS
from loopstream.core.imaging import Mosaic
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
        region = labels[ys, xs] == label
        score = 1.0 if score_map is None else float(score_map[ys, xs][region].mean())
        rows.append(_loop_row(region, xs.start, ys.start, _outline(region), score))
    return _detections(rows)


def probability(logits: np.ndarray) -> np.ndarray:
    """The sigmoid, in the array's precision (float32 for network outputs)."""
    return 1.0 / (1.0 + np.exp(-logits))


def loops_from_logits(
    logits: Mosaic, threshold: float = 0.5, min_area_px: int = 12, with_masks: bool = False
) -> tuple[pd.DataFrame, list[MaskCrop]]:
    """What ``labels_from_probability`` + ``detections_from_labels`` give for ``probability`` of
    the stitched logits (channel 0 foreground, 1 core), row for row, at a fraction of the cost,
    and, when asked, each loop's mask within its box.

    The whole frame is thresholded once, on the logits, a hair below the threshold's logit, and
    its outlines traced once; all else happens on the box of each outline that can hold a loop:
    the component's mask, its seeds, the watershed, which runs only where a component holds two
    or more seeds (or one that cannot flood all of it), and, in one call for the frame, the
    sigmoid of the loops' own pixels for their scores. Only a component with a pixel within the
    hair of the threshold's logit has its probabilities computed, to decide that pixel exactly.
    """
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold {threshold} is not a probability strictly between 0 and 1")
    margin = 1e-3  # in logit units: >> the float32 rounding of the sigmoid, for any threshold
    centre = float(np.log(threshold / (1.0 - threshold)))
    low, high = centre - margin, centre + margin  # below low never a loop's pixel, from high on always
    mask = logits.select(0, lambda tile: tile >= low).view(np.uint8)
    outlines, hierarchy = cv2.findContours(mask, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_NONE)
    width = mask.shape[1]
    loops: list[_Loop] = []
    parents = [] if hierarchy is None else hierarchy[0, :, 3].tolist()
    for outline, parent in zip(outlines, parents, strict=True):
        # A component spans at most len / 2 + 1 px each way (its closed outline goes there and
        # back): most specks are dropped before any array is made. Holes have a parent.
        if parent >= 0 or (len(outline) // 2 + 1) ** 2 < min_area_px:
            continue
        x0, y0, w, h = cv2.boundingRect(outline)
        if w * h < min_area_px:
            continue
        rows, cols = slice(y0, y0 + h), slice(x0, x0 + w)
        outline = outline - np.array([x0, y0], np.int32)  # box px, as a box's own contour
        component = _component_at(mask[rows, cols], *outline[0, 0].tolist())
        if np.count_nonzero(component) < min_area_px:
            continue
        foreground, core = logits.crop(rows, cols)
        seeds = (core >= low) & component
        inside = foreground[component]
        seeds_min = cv2.minMaxLoc(core, seeds.view(np.uint8))[0]  # 0.0 where there is none
        if inside.min() >= high and (seeds_min >= high or not seeds.any()):
            loops += _component_loops(
                component, seeds, outline, inside, foreground, x0, y0, width, min_area_px
            )
            continue
        certain = probability(foreground) >= threshold, probability(core) >= threshold
        for part, r, c in _exact_components(component & certain[0], min_area_px):
            loops += _component_loops(
                part,
                certain[1][r, c] & part,
                _outline(part),
                foreground[r, c][part],
                foreground[r, c],
                x0 + c.start,
                y0 + r.start,
                width,
                min_area_px,
            )
    if not loops:
        return empty_detections(), []
    loops.sort(key=lambda loop: loop.order)
    scores = _mean_probabilities([loop.logits for loop in loops])
    rows_out = [
        _loop_row(loop.region, loop.x0, loop.y0, loop.outline, score)
        for loop, score in zip(loops, scores, strict=True)
    ]
    masks = [MaskCrop(loop.x0, loop.y0, loop.region) for loop in loops] if with_masks else []
    return _detections(rows_out), masks


class _Loop(NamedTuple):
    order: int  # the row ``labels_from_probability`` gives it: see ``_watershed``
    region: np.ndarray  # bool mask within its box
    x0: int  # frame px of the box
    y0: int
    outline: np.ndarray  # outer contour, box px
    logits: np.ndarray  # foreground logits of its pixels, in raster order


def _component_at(crop: np.ndarray, x: int, y: int) -> np.ndarray:
    """Mask of the 8-connected component of ``crop`` (uint8 0/1) holding pixel (x, y): a box can
    hold pieces of other components (a neighbour's corner, a speck inside a ring)."""
    n, labels = cv2.connectedComponents(crop, connectivity=8, ltype=cv2.CV_32S)
    return crop.astype(bool) if n == 2 else labels == labels[y, x]


def _exact_components(inside: np.ndarray, min_area_px: int) -> Iterator[tuple[np.ndarray, slice, slice]]:
    """(mask, rows, cols) of each 8-connected component of ``inside`` large enough to hold a
    loop, tight: a candidate component some of whose pixels fell below the threshold."""
    parts, labels, stats, _ = cv2.connectedComponentsWithStats(inside.view(np.uint8), connectivity=8)
    for k in range(1, parts):
        x0, y0, w, h = stats[k, :4].tolist()
        if stats[k, cv2.CC_STAT_AREA] >= min_area_px:
            r, c = slice(y0, y0 + h), slice(x0, x0 + w)
            yield labels[r, c] == k, r, c


def _component_loops(
    component: np.ndarray,
    seeds: np.ndarray,
    outline: np.ndarray,
    inside: np.ndarray,
    foreground: np.ndarray,
    x0: int,
    y0: int,
    width: int,
    min_area_px: int,
) -> list[_Loop]:
    """The loops of one connected component (its tight box at frame px x0, y0, its outline,
    the foreground logits of its pixels and of its box), each with the order
    ``labels_from_probability`` gives it: seeded loops by their seed's first pixel in raster
    order, then unseeded components by theirs."""
    n_seeds, seed_labels = cv2.connectedComponents(seeds.view(np.uint8), connectivity=8, ltype=cv2.CV_32S)
    box_width = component.shape[1]
    if n_seeds == 1:  # no seed: the whole component is one loop
        order = _UNSEEDED + _raster(int(np.argmax(component)), box_width, x0, y0, width)
        return [_Loop(order, component, x0, y0, outline, inside)]
    if n_seeds == 2 and cv2.connectedComponents(component.view(np.uint8), connectivity=4)[0] == 2:
        order = _raster(int(np.argmax(seeds)), box_width, x0, y0, width)  # its one seed floods it
        return [_Loop(order, component, x0, y0, outline, inside)]
    return _watershed(component, seed_labels, foreground, x0, y0, width, min_area_px)


def _watershed(
    component: np.ndarray,
    seed_labels: np.ndarray,
    foreground: np.ndarray,
    x0: int,
    y0: int,
    width: int,
    min_area_px: int,
) -> list[_Loop]:
    """The loops of a component (its tight box at frame px x0, y0, its foreground logits) that
    its seeds split, each with the order ``labels_from_probability`` gives it: seeded loops by
    their seed's first pixel in raster order (unseeded components follow, by theirs)."""
    crop_width = component.shape[1]
    pixels = np.flatnonzero(seed_labels)
    ids, first = np.unique(seed_labels.ravel()[pixels], return_index=True)
    seed_order = {
        int(i): _raster(int(pixels[f]), crop_width, x0, y0, width) for i, f in zip(ids, first, strict=True)
    }
    basins = watershed(-probability(foreground), seed_labels, mask=component)
    loops = []
    for label, (r, c) in _region_slices(basins):
        region = basins[r, c] == label
        if np.count_nonzero(region) >= min_area_px:
            loop_logits = foreground[r, c][region]
            loops.append(
                _Loop(seed_order[label], region, x0 + c.start, y0 + r.start, _outline(region), loop_logits)
            )
    return loops


_UNSEEDED = 1 << 40  # order offset of unseeded loops: after every seeded one


def _raster(index: int, crop_width: int, x0: int, y0: int, width: int) -> int:
    """Frame raster index of the pixel at flat ``index`` of a crop at (x0, y0)."""
    r, c = divmod(index, crop_width)
    return (y0 + r) * width + x0 + c


def _mean_probabilities(logits: list[np.ndarray]) -> list[float]:
    """The mean ``probability`` of each array, one sigmoid for them all: each mean is numpy's
    float32 mean of the loop's own values, as ``detections_from_labels`` takes it."""
    p = probability(np.concatenate(logits))
    ends = np.cumsum([len(values) for values in logits[:-1]])
    return [float(part.mean()) for part in np.split(p, ends)]


def _outline(region: np.ndarray) -> np.ndarray:
    """The largest outer contour of a bool mask (the loop's outline)."""
    contours, _ = cv2.findContours(region.view(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    return max(contours, key=len)


def _loop_row(region: np.ndarray, x0: int, y0: int, outline: np.ndarray, score: float) -> tuple[float, ...]:
    """One detection: ``region`` is the loop's bool mask within its bounding box at (x0, y0),
    ``outline`` its outer contour in box px."""
    x, y, major, minor, angle = ellipse_of_contour(outline)
    h, w = region.shape
    return (
        score,
        x + x0,
        y + y0,
        major,
        minor,
        angle,
        float(np.count_nonzero(region)),
        float(x0),
        float(y0),
        float(w),
        float(h),
    )


def _detections(rows: list[tuple[float, ...]]) -> pd.DataFrame:
    if not rows:
        return empty_detections()
    return pd.DataFrame(np.array(rows, np.float32), columns=LOOP_COLUMNS)


def mask_crops(labels: np.ndarray) -> list[MaskCrop]:
    """Each labelled region's mask within its bounding box, in the row order of ``detections_from_labels``."""
    return [
        MaskCrop(xs.start, ys.start, labels[ys, xs] == label) for label, (ys, xs) in _region_slices(labels)
    ]


def ellipse_of_contour(contour: np.ndarray) -> tuple[float, float, float, float, float]:
    """(x, y, major, minor, angle_deg) of a contour (int32 points, as ``cv2.findContours`` gives
    them); full axes, angle of the major axis from +x.

    The ellipse is ``cv2.fitEllipse``'s. A contour it cannot fit (``ellipse_fit_is_degenerate``:
    fewer than 5 points, collinear, a non-finite or absurdly long fit) is measured by its
    minimum-area rectangle instead: axes its sides + 1 px (pixels have extent), angle its angle.

    >>> line = np.array([[[x, 3]] for x in range(10)], np.int32)  # collinear: fitEllipse gives NaN
    >>> [round(v, 1) for v in ellipse_of_contour(line)]
    [4.5, 3.0, 10.0, 1.0, 0.0]
    """
    fit = _honest_fit(contour)
    if fit is not None:
        (x, y), (w, h), angle = fit
        w, h = max(w, 1.0), max(h, 1.0)  # a one-pixel-wide region still has a width of one pixel
        return _major_first(x, y, w, h, angle)
    (x, y), (w, h), angle = cv2.minAreaRect(contour.reshape(-1, 1, 2).astype(np.float32))
    return _major_first(x, y, w + 1.0, h + 1.0, angle)


def ellipse_fit_is_degenerate(contour: np.ndarray) -> bool:
    """True when ``cv2.fitEllipse`` gives no honest ellipse for the contour: fewer than 5 points,
    all points on one line, or a fit that is not finite or whose major axis exceeds twice the
    points' own longest extent + 1 px (a near-collinear contour fits axes of thousands of px)."""
    return _honest_fit(contour) is None


def _honest_fit(contour: np.ndarray) -> tuple[tuple[float, float], tuple[float, float], float] | None:
    """``cv2.fitEllipse`` of the contour, or None where it is degenerate (see
    ``ellipse_fit_is_degenerate``): fitted once, the fit is both checked and used."""
    points = contour.reshape(-1, 2)
    if len(points) < 5:
        return None
    if not _clearly_two_dimensional(points) and np.linalg.matrix_rank(_centred(points), tol=1e-6) < 2:
        return None
    (cx, cy), (w, h), angle = cv2.fitEllipse(points)  # OpenCV makes each int point float32
    _, _, box_w, box_h = cv2.boundingRect(points)
    extent = float(np.hypot(box_w - 1.0, box_h - 1.0)) + 1.0  # the points' longest extent + 1
    if not (math.isfinite(w) and math.isfinite(h)) or max(w, h) > 2.0 * extent:
        return None
    return (cx, cy), (w, h), angle


def _centred(points: np.ndarray) -> np.ndarray:
    """The points, float64, less their mean (as ``points.mean(axis=0)`` computes it)."""
    points = points.astype(np.float64)
    return points - points.sum(axis=0) / len(points)


def _clearly_two_dimensional(points: np.ndarray) -> bool:
    """True when the smaller singular value of the centred points is far above ``matrix_rank``'s
    tolerance (1e-6): its square, the smaller eigenvalue of their 2 x 2 scatter matrix (OpenCV's,
    float64), exceeds 1 while rounding moves it by ~1e-16 of the trace. Nearly every loop contour
    passes, so the SVD runs only for thin ones; the decision is the SVD's."""
    flags = cv2.COVAR_NORMAL | cv2.COVAR_ROWS  # the unscaled scatter, about the points' mean
    scatter, _ = cv2.calcCovarMatrix(points.astype(np.float32), np.empty(0), flags)
    (sxx, sxy), (_, syy) = scatter.tolist()
    trace, det = sxx + syy, sxx * syy - sxy * sxy
    return trace > 0 and 2.0 * det / (trace + np.sqrt(max(trace * trace - 4.0 * det, 0.0))) > 1.0


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
