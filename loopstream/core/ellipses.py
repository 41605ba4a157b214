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

from collections.abc import Iterator

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
        scores = None if score_map is None else score_map[ys, xs]
        rows.append(_loop_row(region, xs.start, ys.start, scores))
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

    The whole frame is thresholded once, on the logits, a hair below the threshold's logit; all
    else happens on the crops of the connected components large enough to hold a loop:
    probabilities, the exact threshold, the seeds, and the watershed, which runs only where a
    component holds two or more seeds (or one that cannot flood all of it).
    """
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold {threshold} is not a probability strictly between 0 and 1")
    margin = 1e-3  # in logit units: >> the float32 rounding of the sigmoid, for any threshold
    cut = float(np.log(threshold / (1.0 - threshold))) - margin
    candidates = logits.select(0, lambda tile: tile >= cut).view(np.uint8)
    _, components, stats, _ = cv2.connectedComponentsWithStatsWithAlgorithm(
        candidates,
        8,
        cv2.CV_32S,
        cv2.CCL_GRANA,  # the fastest here; labels' order is not used
    )
    width = candidates.shape[1]
    loops: list[tuple[int, np.ndarray, int, int, np.ndarray]] = []  # (order, region, x0, y0, P)
    for k in np.flatnonzero(stats[:, cv2.CC_STAT_AREA] >= min_area_px).tolist():
        if k == 0:
            continue
        x0, y0, w, h = stats[k, :4].tolist()
        rows, cols = slice(y0, y0 + h), slice(x0, x0 + w)
        foreground, core = probability(logits.crop(rows, cols))
        candidate = components[rows, cols] == k
        inside = candidate & (foreground >= threshold)
        core = core >= threshold
        whole = np.count_nonzero(inside) == stats[k, cv2.CC_STAT_AREA]  # inside is within candidate
        parts = [(inside, slice(0, h), slice(0, w))] if whole else []
        for part, r, c in parts or _exact_components(inside, min_area_px):
            loops += _split(
                part, core[r, c] & part, foreground[r, c], x0 + c.start, y0 + r.start, width, min_area_px
            )
    loops.sort(key=lambda loop: loop[0])
    rows_out = [_loop_row(region, x0, y0, score) for _, region, x0, y0, score in loops]
    masks = [MaskCrop(x0, y0, region) for _, region, x0, y0, _ in loops] if with_masks else []
    return _detections(rows_out), masks


def _exact_components(inside: np.ndarray, min_area_px: int) -> Iterator[tuple[np.ndarray, slice, slice]]:
    """(mask, rows, cols) of each 8-connected component of ``inside`` large enough to hold a
    loop, tight: a candidate component some of whose pixels fell below the threshold."""
    parts, labels, stats, _ = cv2.connectedComponentsWithStats(inside.view(np.uint8), connectivity=8)
    for k in range(1, parts):
        x0, y0, w, h = stats[k, :4].tolist()
        if stats[k, cv2.CC_STAT_AREA] >= min_area_px:
            r, c = slice(y0, y0 + h), slice(x0, x0 + w)
            yield labels[r, c] == k, r, c


def _split(
    component: np.ndarray,
    seeds: np.ndarray,
    foreground: np.ndarray,
    x0: int,
    y0: int,
    width: int,
    min_area_px: int,
) -> list[tuple[int, np.ndarray, int, int, np.ndarray]]:
    """The loops of one connected component (its tight crop at frame px x0, y0), each with the
    order ``labels_from_probability`` gives it: seeded loops by their seed's first pixel in
    raster order, then unseeded components by theirs."""
    n_seeds, seed_labels = cv2.connectedComponents(seeds.view(np.uint8), connectivity=8, ltype=cv2.CV_32S)
    crop_width = component.shape[1]
    if n_seeds == 1:  # no seed: the whole component is one loop
        return [
            (
                _UNSEEDED + _raster(int(np.argmax(component)), crop_width, x0, y0, width),
                component,
                x0,
                y0,
                foreground,
            )
        ]
    if n_seeds == 2 and cv2.connectedComponents(component.view(np.uint8), connectivity=4)[0] == 2:
        order = _raster(int(np.argmax(seeds)), crop_width, x0, y0, width)
        return [(order, component, x0, y0, foreground)]  # one seed floods its whole component
    pixels = np.flatnonzero(seed_labels)
    ids, first = np.unique(seed_labels.ravel()[pixels], return_index=True)
    seed_order = {
        int(i): _raster(int(pixels[f]), crop_width, x0, y0, width) for i, f in zip(ids, first, strict=True)
    }
    basins = watershed(-foreground, seed_labels, mask=component)
    loops = []
    for label, (r, c) in _region_slices(basins):
        region = basins[r, c] == label
        if region.sum() >= min_area_px:
            loops.append((seed_order[label], region, x0 + c.start, y0 + r.start, foreground[r, c]))
    return loops


_UNSEEDED = 1 << 40  # order offset of unseeded loops: after every seeded one


def _raster(index: int, crop_width: int, x0: int, y0: int, width: int) -> int:
    """Frame raster index of the pixel at flat ``index`` of a crop at (x0, y0)."""
    r, c = divmod(index, crop_width)
    return (y0 + r) * width + x0 + c


def _loop_row(region: np.ndarray, x0: int, y0: int, scores: np.ndarray | None) -> tuple[float, ...]:
    """One detection: ``region`` is the loop's bool mask within its bounding box at (x0, y0)."""
    contours, _ = cv2.findContours(region.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    x, y, major, minor, angle = ellipse_of_contour(max(contours, key=len))
    score = 1.0 if scores is None else float(scores[region].mean())
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
    points = contour.reshape(-1, 2).astype(np.float64)
    if len(points) < 5:
        return None
    centred = points - points.sum(axis=0) / len(points)  # what points.mean(axis=0) computes
    if not _clearly_two_dimensional(centred) and np.linalg.matrix_rank(centred, tol=1e-6) < 2:
        return None
    (cx, cy), (w, h), angle = cv2.fitEllipse(contour.reshape(-1, 1, 2).astype(np.float32))
    extent = float(np.hypot(*(points.max(axis=0) - points.min(axis=0)))) + 1.0
    if not (np.isfinite(w) and np.isfinite(h)) or max(w, h) > 2.0 * extent:
        return None
    return (cx, cy), (w, h), angle


def _clearly_two_dimensional(centred: np.ndarray) -> bool:
    """True when the smaller singular value of the centred points is far above ``matrix_rank``'s
    tolerance (1e-6): its square, the 2 x 2 scatter matrix's smaller eigenvalue, exceeds 1 while
    rounding moves it by ~1e-16 of the trace. Nearly every loop contour passes, so the SVD runs
    only for thin ones; the decision is the SVD's."""
    (sxx, sxy), (_, syy) = (centred.T @ centred).tolist()
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
