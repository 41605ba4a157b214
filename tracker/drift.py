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


def median(values: np.ndarray) -> float:
    """``np.median`` of a 1-D array, to the bit, at a fraction of its overhead (it runs 3 times a frame).

    >>> median(np.array([3.0, 1.0, 2.0, 10.0])), float(np.median([3.0, 1.0, 2.0, 10.0]))
    (2.5, 2.5)
    """
    ordered = np.sort(values)
    middle = len(ordered) // 2
    return float(ordered[middle]) if len(ordered) % 2 else float((ordered[middle - 1] + ordered[middle]) / 2)


def robust_mean(dx: np.ndarray, dy: np.ndarray, floor_px: float = 0.5) -> tuple[float, float]:
    """Mean of 2-D displacements after dropping those far (> 3 MAD, >= ``floor_px``) from the median."""
    mx, my = median(dx), median(dy)
    radius = np.hypot(dx - mx, dy - my)
    keep = radius <= max(3.0 * 1.4826 * median(radius), floor_px)
    return float(np.mean(dx[keep])), float(np.mean(dy[keep]))


class DriftEstimator:
    """Cumulative drift of one session; ``memory_frames`` bounds how long homes of lost tracks live.

    The homes are one table (a row per track seen within the memory, by ascending track id), so a
    frame's loops are looked up and moved on as arrays, never one by one.
    """

    def __init__(self, memory_frames: int) -> None:
        self.memory_frames = max(int(memory_frames), 0)
        self.drift: tuple[float, float] = (0.0, 0.0)  # at the last frame
        self.previous: tuple[float, float] = (0.0, 0.0)  # at the frame before
        self._track_ids = np.empty(0, dtype=np.int64)  # ascending
        self._homes = np.empty((0, 4))  # detections, mean corrected x, mean corrected y, last ordinal

    def predict(self) -> tuple[float, float]:
        return predicted_drift(self.drift, self.previous)

    def update(
        self, track_ids: np.ndarray, x_px: np.ndarray, y_px: np.ndarray, ordinal: int
    ) -> tuple[float, float]:
        """Estimate the drift of a new frame from its linked loops, then move the homes on."""
        rows = self._rows(track_ids)
        known = rows >= 0
        if known.any():
            homes = self._homes[rows[known]]
            drift = robust_mean(x_px[known] - homes[:, 1], y_px[known] - homes[:, 2])
        elif ordinal == 0:
            drift = (0.0, 0.0)
        else:
            drift = self.predict()  # nothing to anchor on: keep moving at the last velocity
        self.previous, self.drift = self.drift, drift
        self._add(track_ids, rows, x_px - drift[0], y_px - drift[1], ordinal)
        return drift

    def _rows(self, track_ids: np.ndarray) -> np.ndarray:
        """The homes row of each track (a frame holds each track once), -1 where it has none."""
        at = np.searchsorted(self._track_ids, track_ids)
        if not len(self._track_ids):
            return np.full(len(track_ids), -1)
        at = np.minimum(at, len(self._track_ids) - 1)
        return np.where(self._track_ids[at] == track_ids, at, -1)

    def _add(
        self,
        track_ids: np.ndarray,
        rows: np.ndarray,
        x_corrected_px: np.ndarray,
        y_corrected_px: np.ndarray,
        ordinal: int,
    ) -> None:
        """Fold corrected positions into the homes (running means, so a stored home restores exactly)."""
        known = rows >= 0
        at, homes = rows[known], self._homes
        homes[at, 0] += 1.0
        homes[at, 1] += (x_corrected_px[known] - homes[at, 1]) / homes[at, 0]
        homes[at, 2] += (y_corrected_px[known] - homes[at, 2]) / homes[at, 0]
        homes[at, 3] = ordinal
        new = ~known
        if new.any():
            fresh = np.column_stack(
                [np.ones(new.sum()), x_corrected_px[new], y_corrected_px[new], np.full(new.sum(), ordinal)]
            )
            self._set(np.concatenate([self._track_ids, track_ids[new]]), np.concatenate([homes, fresh]))
        horizon = ordinal - self.memory_frames - 1
        if len(self._track_ids) > 2 * len(track_ids) + 64:  # prune now and then, not every frame
            kept = self._homes[:, 3] >= horizon
            self._set(self._track_ids[kept], self._homes[kept])

    def _set(self, track_ids: np.ndarray, homes: np.ndarray) -> None:
        order = np.argsort(track_ids, kind="stable")
        self._track_ids, self._homes = track_ids[order].astype(np.int64), homes[order]

    def homes_of(self, track_ids: np.ndarray) -> np.ndarray:
        """``(n, 3)`` detections so far, home x and home y (px) of each track, as stored per detection."""
        return self._homes[self._rows(track_ids), :3].reshape(-1, 3)

    def restore(
        self, drift: tuple[float, float], previous: tuple[float, float], latest: pd.DataFrame
    ) -> None:
        """Rebuild from stored state: the last two drifts and the latest stored home of each track
        seen within the linker's memory (columns ``track_id, track_detections, home_x_px,
        home_y_px, ordinal``); older homes can never be used again, since their tracks cannot link.
        """
        self.drift, self.previous = drift, previous
        columns = ["track_detections", "home_x_px", "home_y_px", "ordinal"]
        self._set(latest.track_id.to_numpy(np.int64), latest[columns].to_numpy(float).reshape(-1, 4))
