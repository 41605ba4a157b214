"""Augmentations for bright-field TEM frames, applied to the raw frame before standardisation.

Why these: loops look the same under any flip or 90-degree rotation of the sample; exposure,
detector response and foil thickness change contrast, gamma, shot noise and focus (blur) from
experiment to experiment; loops are not perfect ellipses and foils bend, which a smooth elastic
deformation (a few px over tens of px) imitates, so the few hand-drawn real loops count for more.
Standardisation comes last, as in serving, so the model sees exactly what
``loopstream.core.imaging.standardise`` makes of an augmented camera frame.

Examples
--------
>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> frame = rng.uniform(0, 255, (64, 64))
>>> image, targets = augment(frame, np.zeros((2, 64, 64), np.uint8), rng)
>>> image.shape, targets.shape, round(float(image.std()), 3)
((64, 64), (2, 64, 64), 1.0)
"""

from __future__ import annotations

import cv2
import numpy as np

from loopstream.core.imaging import standardise

GAMMA_RANGE = (0.7, 1.45)
BLUR_SIGMA_PX = (0.3, 1.5)
NOISE_STD = (0.02, 0.12)  # of the [0, 1] intensity range
GRADIENT_AMPLITUDE = 0.15  # of the [0, 1] intensity range: slow thickness / illumination change
ELASTIC_PROBABILITY = 0.5
ELASTIC_AMPLITUDE_PX = (1.0, 4.0)  # largest displacement of the field
ELASTIC_SMOOTHNESS_PX = 12.0  # Gaussian sigma of the field: loops bend, they do not shatter


def augment(
    image: np.ndarray, targets: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """A randomly augmented, standardised float32 image [H, W] and its targets [C, H, W]."""
    x: np.ndarray = image.astype(np.float32)
    x = (x - x.min()) / max(float(np.ptp(x)), 1e-6)
    x = x ** np.float32(rng.uniform(*GAMMA_RANGE))
    if rng.random() < ELASTIC_PROBABILITY:
        x, targets = elastic_deform(x, targets, rng)
    if rng.random() < 0.5:
        x = x + _slow_field(x.shape, rng) * np.float32(rng.uniform(0, GRADIENT_AMPLITUDE))
    if rng.random() < 0.4:
        x = cv2.GaussianBlur(x, (0, 0), float(rng.uniform(*BLUR_SIGMA_PX)))
    if rng.random() < 0.5:
        x = x + rng.standard_normal(x.shape, dtype=np.float32) * np.float32(rng.uniform(*NOISE_STD))
    k = int(rng.integers(4))
    x, targets = np.rot90(x, k), np.rot90(targets, k, axes=(1, 2))
    if rng.random() < 0.5:
        x, targets = x[:, ::-1], targets[:, :, ::-1]
    return standardise(np.ascontiguousarray(x)), np.ascontiguousarray(targets)


def elastic_deform(
    image: np.ndarray, targets: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """The same smooth random displacement applied to an image (bilinear) and its targets (nearest);
    edges are filled by reflection, so no dark border appears.

    >>> rng = np.random.default_rng(1)
    >>> masks = np.zeros((1, 64, 64), np.uint8); masks[0, 20:40, 20:40] = 1
    >>> warped_image, warped = elastic_deform(np.ones((64, 64), np.float32), masks, rng)
    >>> warped.dtype, bool(abs(int(warped.sum()) - 400) < 80), bool(np.allclose(warped_image, 1))
    (dtype('uint8'), True, True)
    """
    h, w = image.shape
    field = cv2.GaussianBlur(rng.uniform(-1, 1, (h, w, 2)).astype(np.float32), (0, 0), ELASTIC_SMOOTHNESS_PX)
    field = field * (rng.uniform(*ELASTIC_AMPLITUDE_PX) / max(float(np.abs(field).max()), 1e-6))
    ys, xs = np.mgrid[:h, :w].astype(np.float32)
    map_x, map_y = xs + field[..., 0], ys + field[..., 1]

    def warp(plane: np.ndarray, interpolation: int) -> np.ndarray:
        return cv2.remap(plane, map_x, map_y, interpolation, borderMode=cv2.BORDER_REFLECT_101)

    warped_targets = np.stack([warp(t, cv2.INTER_NEAREST) for t in targets]) if len(targets) else targets
    return warp(image, cv2.INTER_LINEAR), warped_targets


def random_crop(
    image: np.ndarray, targets: np.ndarray, size_px: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """A random ``size_px`` square of a standardised image and its targets (frames no larger pass)."""
    h, w = image.shape
    if h <= size_px and w <= size_px:
        return image, targets
    y0, x0 = int(rng.integers(h - size_px + 1)), int(rng.integers(w - size_px + 1))
    return image[y0 : y0 + size_px, x0 : x0 + size_px], targets[:, y0 : y0 + size_px, x0 : x0 + size_px]


def _slow_field(shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """A smooth random field in [-1, 1] varying over a few hundred px."""
    coarse = rng.uniform(-1, 1, (3, 3)).astype(np.float32)
    return cv2.resize(coarse, (shape[1], shape[0]), interpolation=cv2.INTER_CUBIC).clip(-1, 1)


def rescaled_crop(
    image: np.ndarray,
    polygons: list[np.ndarray],
    boxes: np.ndarray,
    size_px: int,
    scale_range: tuple[float, float],
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """A random window of ``image`` resampled to ``size_px`` square by a scale drawn log-uniformly
    from ``scale_range`` (clamped so the window fits in the frame), and the [K, size, size] uint8
    masks of the loops (polygons in frame px) it holds: the same loop seen 0.5x to 2x its size,
    so the network learns loops from a few px to a hundred."""
    h, w = image.shape
    scale = float(np.exp(rng.uniform(*np.log(scale_range))))
    side = min(size_px / scale, h, w)
    scale = size_px / side
    x0, y0 = float(rng.uniform(0, w - side)), float(rng.uniform(0, h - side))
    affine = np.array([[scale, 0, -x0 * scale], [0, scale, -y0 * scale]], np.float32)
    interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    crop = cv2.warpAffine(image, affine, (size_px, size_px), flags=interpolation)
    inside = (boxes[:, 2] > x0) & (boxes[:, 0] < x0 + side) & (boxes[:, 3] > y0) & (boxes[:, 1] < y0 + side)
    masks = np.zeros((int(inside.sum()), size_px, size_px), np.uint8)
    held = [polygon for polygon, keep in zip(polygons, inside, strict=True) if keep]
    for mask, polygon in zip(masks, held, strict=True):
        points = np.round((polygon - (x0, y0)) * scale * 16).astype(np.int32)
        cv2.fillPoly(mask, [points], (1,), lineType=cv2.LINE_8, shift=4)
    return crop, masks
