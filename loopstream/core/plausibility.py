"""Detections no dislocation loop could make: a hot pixel, a blob of noise.

Networks answer something for any input; on a frame of pure noise, or around one saturated
pixel, they find "loops" (score 0.4-0.9, 4-40 px). A real loop differs from the background
around it (dark in bright field, bright in dark field) and spans more than a couple of pixels, so
each detection is checked against the frame after the network:

- contrast: how far the pixels inside its ellipse lie from the median of a ring of background
  around it, in that ring's noise (sigma = 1.4826 x its median absolute deviation), as a
  significance: |mean of the clipped z-scores| x sqrt(pixels). A region of pure noise scores
  about 1 whatever its size, a loop more the larger and deeper it is. Each z-score is clipped at
  ``CLIP_SIGMAS``, so one saturated pixel moves the sum by at most that much; sigmas of the ring
  itself, so the rule holds on dim, bright, flat or noisy frames alike (and under the pipelines'
  affine normalisations). Rings (bright-field loops are often dark rims) count as loops too: the
  pixels inside need not be uniform, only off the background on average.
- size: the ellipse's major axis of at least ``min_major_px``.

Both pipeline families apply it to their detections (``loopstream.serving.pipelines``), with the
thresholds of the pipeline spec (``min_contrast``, ``min_major_px``).

Examples
--------
>>> import numpy as np, cv2
>>> from loopstream.core.ellipses import detections_from_labels
>>> rng = np.random.default_rng(0)
>>> image = rng.normal(0.0, 1.0, (96, 96)).astype(np.float32)
>>> loop = np.zeros((96, 96), np.int32)
>>> _ = cv2.ellipse(loop, (48, 48), (10, 6), 0, 0, 360, 1, -1)
>>> image[loop > 0] -= 3.0  # a dark loop, three noise sigmas deep
>>> detections = detections_from_labels(loop)
>>> bool(loop_contrast(detections, image)[0] > 20)
True
>>> plausible_loops(detections, image, min_contrast=6.0, min_major_px=4.0).tolist()
[True]
>>> flat = np.zeros((96, 96), np.float32)
>>> flat[48, 48] = 1e4  # one saturated pixel
>>> plausible_loops(detections, flat, min_contrast=6.0, min_major_px=4.0).tolist()
[False]
>>> noise = rng.normal(0.0, 1.0, (96, 96)).astype(np.float32)
>>> plausible_loops(detections, noise, min_contrast=6.0, min_major_px=4.0).tolist()
[False]
"""

from __future__ import annotations

import cv2
import numpy as np
import pandas as pd

MAD_TO_SIGMA = 1.4826  # a Gaussian's standard deviation per median absolute deviation
CLIP_SIGMAS = 5.0  # the most one pixel's z-score counts
MIN_NOISE = 1e-6  # the noise of a perfectly flat background, so its z-scores stay finite
RING_GAP_PX = 2  # background starts this far outside the ellipse (its blurred edge is neither)


def loop_contrast(detections: pd.DataFrame, image: np.ndarray) -> np.ndarray:
    """Each detection's contrast significance against its local background (see the module doc).

    The ring: the detection's box grown by half its major axis (at least 4 px), less the ellipse
    grown by ``RING_GAP_PX``.
    """
    h, w = image.shape
    contrast = np.zeros(len(detections), np.float64)
    for i, d in enumerate(detections.itertuples(index=False)):
        margin = int(max(4.0, 0.5 * d.major_px)) + RING_GAP_PX
        x0, y0 = max(int(d.bbox_x_px) - margin, 0), max(int(d.bbox_y_px) - margin, 0)
        x1 = min(int(np.ceil(d.bbox_x_px + d.bbox_width_px)) + margin, w)
        y1 = min(int(np.ceil(d.bbox_y_px + d.bbox_height_px)) + margin, h)
        window = image[y0:y1, x0:x1].astype(np.float64)
        inside = np.zeros(window.shape, np.uint8)
        centre = (float(d.x_px) - x0, float(d.y_px) - y0)
        cv2.ellipse(inside, (centre, (float(d.major_px), float(d.minor_px)), float(d.angle_deg)), (1,), -1)
        near = cv2.dilate(inside, np.ones((2 * RING_GAP_PX + 1,) * 2, np.uint8))
        loop, ring = window[inside > 0], window[near == 0]
        if loop.size == 0 or ring.size == 0:
            continue  # a detection with no pixels, or covering its whole window: not a loop
        background = float(np.median(ring))
        noise = max(MAD_TO_SIGMA * float(np.median(np.abs(ring - background))), MIN_NOISE)
        z = np.clip((loop - background) / noise, -CLIP_SIGMAS, CLIP_SIGMAS)
        contrast[i] = abs(float(z.mean())) * np.sqrt(loop.size)
    return contrast


def plausible_loops(
    detections: pd.DataFrame, image: np.ndarray, min_contrast: float, min_major_px: float
) -> np.ndarray:
    """Boolean mask over ``detections``: the rows a loop could have made in ``image``."""
    if len(detections) == 0:
        return np.zeros(0, bool)
    big_enough = detections.major_px.to_numpy() >= min_major_px
    if min_contrast <= 0:
        return big_enough
    return big_enough & (loop_contrast(detections, image) >= min_contrast)
