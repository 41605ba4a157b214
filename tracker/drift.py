"""Online stage-drift estimate from linked loops.

trackpy's ``compute_drift`` needs the whole movie. Online, we keep for every live track its
*home*: the running mean of its drift-corrected positions. The drift at a frame is then the
robust mean, over loops already seen, of (position - home). Anchoring to homes instead of
summing frame-to-frame steps keeps detection noise from accumulating as a random walk
(with 0.2 px noise and 50 loops, summed steps wander ~1 px in 500 frames; homes stay ~0.1 px).
Loops that really move (glide, mis-links) are rejected as outliers around the median.

Drift is cumulative since the session's first frame, (x, y) in px: a loop at sample position p
appears at p + drift.
"""

from __future__ import annotations

import numpy as np
import pandas as pd


def predicted_drift(previous: tuple[float, float], before: tuple[float, float]) -> tuple[float, float]:
    """Drift expected at the next frame: constant velocity from the last two estimates (px)."""
    return 2.0 * previous[0] - before[0], 2.0 * previous[1] - before[1]


def robust_mean(dx: np.ndarray, dy: np.ndarray, floor_px: float = 0.5) -> tuple[float, float]:
    """Mean of 2-D displacements after dropping those far (> 3 MAD, >= ``floor_px``) from the median."""
    mx, my = float(np.median(dx)), float(np.median(dy))
    radius = np.hypot(dx - mx, dy - my)
    keep = radius <= max(3.0 * 1.4826 * float(np.median(radius)), floor_px)
    return float(np.mean(dx[keep])), float(np.mean(dy[keep]))


class DriftEstimator:
    """Cumulative drift of one session; ``memory_frames`` bounds how long homes of lost tracks live."""

    def __init__(self, memory_frames: int) -> None:
        self.memory_frames = max(int(memory_frames), 0)
        self.drift: tuple[float, float] = (0.0, 0.0)  # at the last frame
        self.previous: tuple[float, float] = (0.0, 0.0)  # at the frame before
        # track id -> [detections, sum of corrected x, sum of corrected y, last ordinal]
        self.homes: dict[int, list[float]] = {}

    def predict(self) -> tuple[float, float]:
        return predicted_drift(self.drift, self.previous)

    def update(
        self, track_ids: np.ndarray, x_px: np.ndarray, y_px: np.ndarray, ordinal: int
    ) -> tuple[float, float]:
        """Estimate the drift of a new frame from its linked loops, then move the homes on."""
        known = [i for i, t in enumerate(track_ids) if int(t) in self.homes]
        if known:
            homes = np.array([self.homes[int(track_ids[i])] for i in known])
            dx = x_px[known] - homes[:, 1] / homes[:, 0]
            dy = y_px[known] - homes[:, 2] / homes[:, 0]
            drift = robust_mean(dx, dy)
        elif ordinal == 0:
            drift = (0.0, 0.0)
        else:
            drift = self.predict()  # nothing to anchor on: keep moving at the last velocity
        self.previous, self.drift = self.drift, drift
        self.add(track_ids, x_px - drift[0], y_px - drift[1], ordinal)
        return drift

    def add(
        self, track_ids: np.ndarray, x_corrected_px: np.ndarray, y_corrected_px: np.ndarray, ordinal: int
    ) -> None:
        """Fold corrected positions into the homes (also used to rebuild them after a restart)."""
        for t, cx, cy in zip(
            track_ids.tolist(), x_corrected_px.tolist(), y_corrected_px.tolist(), strict=True
        ):
            home = self.homes.get(t)
            if home is None:
                self.homes[t] = [1.0, cx, cy, ordinal]
            else:
                home[0] += 1.0
                home[1] += cx
                home[2] += cy
                home[3] = ordinal
        horizon = ordinal - self.memory_frames - 1
        if len(self.homes) > 2 * len(track_ids) + 64:  # prune now and then, not every frame
            self.homes = {t: h for t, h in self.homes.items() if h[3] >= horizon}

    def restore(
        self, drift: tuple[float, float], previous: tuple[float, float], history: pd.DataFrame
    ) -> None:
        """Rebuild from stored state: the last two drifts and every detection of the live tracks.

        ``history`` has columns ``track_id, x_corrected_px, y_corrected_px, ordinal`` in stored
        order, so the homes are summed in the same order as online and come out bit-identical.
        """
        self.drift, self.previous = drift, previous
        self.homes = {}
        for ordinal, group in history.groupby("ordinal", sort=True):
            self.add(
                group.track_id.to_numpy(),
                group.x_corrected_px.to_numpy(),
                group.y_corrected_px.to_numpy(),
                int(ordinal),
            )
