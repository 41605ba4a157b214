"""Checks on incoming frames: each problem is reported with what is wrong and what to do."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from loopstream.core.detections import LOOP_COLUMNS

_NON_NEGATIVE = ["major_px", "minor_px", "area_px", "bbox_width_px", "bbox_height_px"]


@dataclass(frozen=True)
class ShadowInput:
    """How a shadow candidate's detections of the frame agreed with the session's (client-computed)."""

    model_version: str
    candidate_loop_count: int
    matched: int
    f1: float
    latency_s: float


@dataclass(frozen=True)
class FrameInput:
    """One frame's detections as the domain sees them (wire-independent)."""

    session_id: str
    frame_index: int
    timestamp_s: float
    model_name: str
    model_version: str
    width_px: int
    height_px: int
    loops: pd.DataFrame  # LOOP_COLUMNS, one row per loop
    latency_s: float = 0.0  # client-measured inference latency; 0 = not measured
    shadow: ShadowInput | None = None  # None = not shadowed


def frame_problem(frame: FrameInput) -> str | None:
    """The first thing wrong with ``frame`` as a sentence, or None if it can be stored.

    >>> loops = pd.DataFrame([[0.9, 5, 5, -3, 2, 0, 10, 0, 0, 4, 4]], columns=LOOP_COLUMNS)
    >>> frame = FrameInput("s", 0, 0.0, "m", "", 64, 64, loops)
    >>> print(frame_problem(frame))  # doctest: +NORMALIZE_WHITESPACE
    loop 0 has major_px = -3.0: every value must be finite, sizes >= 0 and axes > 0;
    fix the detector output and resend frame 0
    """
    resend = f"fix the detector output and resend frame {frame.frame_index}"
    if frame.frame_index < 0:
        return f"frame_index {frame.frame_index} is negative: frame indices start at 0"
    if not np.isfinite(frame.timestamp_s) or frame.timestamp_s < 0:
        return (
            f"timestamp_s = {frame.timestamp_s} must be finite and >= 0 (s since the first frame); {resend}"
        )
    if frame.width_px <= 0 or frame.height_px <= 0:
        return (
            f"frame size {frame.width_px} x {frame.height_px} px is not positive: set width_px and height_px "
            f"to the analysed image size (needed for densities); resend frame {frame.frame_index}"
        )
    if not np.isfinite(frame.latency_s) or frame.latency_s < 0:
        return f"latency_s = {frame.latency_s} must be finite and >= 0 (0 = not measured); {resend}"
    shadow = frame.shadow
    if shadow is not None and not (
        shadow.model_version
        and 0 <= shadow.matched <= shadow.candidate_loop_count
        and 0.0 <= shadow.f1 <= 1.0
        and np.isfinite(shadow.latency_s)
        and shadow.latency_s >= 0
    ):
        return (
            f"shadow agreement {shadow} is inconsistent: it needs the candidate's model_version, "
            f"0 <= matched <= candidate_loop_count, 0 <= f1 <= 1 and latency_s >= 0; {resend}"
        )
    loops = frame.loops if list(frame.loops.columns) == LOOP_COLUMNS else frame.loops[LOOP_COLUMNS]
    values = loops.to_numpy(dtype=float)
    bad = ~np.isfinite(values)
    sizes = [LOOP_COLUMNS.index(c) for c in _NON_NEGATIVE]
    axes = [LOOP_COLUMNS.index("major_px"), LOOP_COLUMNS.index("minor_px")]
    bad[:, sizes] |= values[:, sizes] < 0
    bad[:, axes] |= values[:, axes] == 0
    if bad.any():
        row, col = (int(i[0]) for i in np.nonzero(bad))
        return (
            f"loop {row} has {LOOP_COLUMNS[col]} = {values[row, col]}: every value must be finite, "
            f"sizes >= 0 and axes > 0; {resend}"
        )
    return None
