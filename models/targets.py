"""Training targets: per-pixel foreground and core masks from loop ellipses or instance masks.

The core of a loop is its ellipse with both axes shrunk to ``CORE_SCALE``: cores of touching
loops do not touch, so at inference they seed a watershed that splits the loops again
(``loopstream.core.ellipses.labels_from_probability``).

Examples
--------
>>> import pandas as pd
>>> loops = pd.DataFrame({"x_px": [20.0], "y_px": [16.0], "major_px": [20.0], "minor_px": [10.0],
...                       "angle_deg": [0.0]})
>>> t = targets_from_ellipses(loops, (32, 40))
>>> t.shape, int(t[0].sum()) > int(t[1].sum()) > 0
((2, 32, 40), True)
"""

from __future__ import annotations

from collections.abc import Iterable

import cv2
import numpy as np
import pandas as pd

from loopstream.core.ellipses import ellipse_of_contour

CORE_SCALE = 0.5  # core axes / loop axes
_SHIFT = 4  # cv2 drawing with 1/16 px precision


def draw_ellipse(mask: np.ndarray, x: float, y: float, major: float, minor: float, angle: float) -> None:
    """Fill one ellipse (full axes ``major``/``minor`` px, angle of the major axis from +x) in place."""
    s = 1 << _SHIFT
    centre = (round(x * s), round(y * s))
    axes = (max(round(major / 2 * s), 1), max(round(minor / 2 * s), 1))
    cv2.ellipse(mask, centre, axes, float(angle), 0, 360, (1,), -1, lineType=cv2.LINE_8, shift=_SHIFT)


def targets_from_ellipses(loops: pd.DataFrame, shape: tuple[int, int]) -> np.ndarray:
    """[2, H, W] uint8 foreground and core masks of loops given as ellipses (x_px, y_px, ...)."""
    out = np.zeros((2, *shape), np.uint8)
    for loop in loops.itertuples(index=False):
        draw_ellipse(out[0], loop.x_px, loop.y_px, loop.major_px, loop.minor_px, loop.angle_deg)
        draw_ellipse(
            out[1],
            loop.x_px,
            loop.y_px,
            loop.major_px * CORE_SCALE,
            loop.minor_px * CORE_SCALE,
            loop.angle_deg,
        )
    return out


def targets_from_instances(instances: Iterable[np.ndarray], shape: tuple[int, ...]) -> np.ndarray:
    """[2, H, W] uint8 masks (``shape`` = (H, W)) from binary instance masks: their union, and their
    shrunken fitted ellipses."""
    out = np.zeros((2, *shape), np.uint8)
    for mask in instances:
        mask = mask.astype(np.uint8)
        contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        if not contours:
            continue
        out[0] |= mask
        x, y, major, minor, angle = ellipse_of_contour(max(contours, key=len))
        draw_ellipse(out[1], x, y, major * CORE_SCALE, minor * CORE_SCALE, angle)
    out[1] &= out[0]
    return out
