"""Online stage-drift estimate from linked loops.

trackpy's ``compute_drift`` needs the whole movie. Online, we keep for every live track its
*home*: the running mean of its drift-corrected positions (stored with each detection, so
a restarted tracker needs only each live track's latest detection). The drift at a frame is then the
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
        # track id -> [detections, mean corrected x, mean corrected y, last ordinal]
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
            drift = robust_mean(x_px[known] - homes[:, 1], y_px[known] - homes[:, 2])
        elif ordinal == 0:
            drift = (0.0, 0.0)
        else:
            drift = self.predict()  # nothing to anchor on: keep moving at the last velocity
        self.previous, self.drift = self.drift, drift
        self._add(track_ids, x_px - drift[0], y_px - drift[1], ordinal)
        return drift

    def _add(
        self, track_ids: np.ndarray, x_corrected_px: np.ndarray, y_corrected_px: np.ndarray, ordinal: int
    ) -> None:
        """Fold corrected positions into the homes (running means, so a stored home restores exactly)."""
        for t, cx, cy in zip(
            track_ids.tolist(), x_corrected_px.tolist(), y_corrected_px.tolist(), strict=True
        ):
            home = self.homes.get(t)
            if home is None:
                self.homes[t] = [1.0, cx, cy, ordinal]
            else:
                home[0] += 1.0
                home[1] += (cx - home[1]) / home[0]
                home[2] += (cy - home[2]) / home[0]
                home[3] = ordinal
        horizon = ordinal - self.memory_frames - 1
        if len(self.homes) > 2 * len(track_ids) + 64:  # prune now and then, not every frame
            self.homes = {t: h for t, h in self.homes.items() if h[3] >= horizon}

    def homes_of(self, track_ids: np.ndarray) -> np.ndarray:
        """``(n, 3)`` detections so far, home x and home y (px) of each track, as stored per detection."""
        return np.array([self.homes[t][:3] for t in track_ids.tolist()], dtype=float).reshape(-1, 3)

    def restore(
        self, drift: tuple[float, float], previous: tuple[float, float], latest: pd.DataFrame
    ) -> None:
        """Rebuild from stored state: the last two drifts and the latest stored home of each track
        seen within the linker's memory (columns ``track_id, track_detections, home_x_px,
        home_y_px, ordinal``); older homes can never be used again, since their tracks cannot link.
        """
        self.drift, self.previous = drift, previous
        self.homes = {
            int(t): [float(n), float(x), float(y), int(o)]
            for t, n, x, y, o in zip(
                latest.track_id,
                latest.track_detections,
                latest.home_x_px,
                latest.home_y_px,
                latest.ordinal,
                strict=True,
            )
        }
