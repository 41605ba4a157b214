"""Online stage-drift estimate from linked loops.

trackpy's ``compute_drift`` needs the whole movie. Online, we keep for every live track its
*home*: the running mean of its drift-corrected positions (stored with each detection, so
a restarted tracker needs only each live track's latest detection). The drift at a frame is then the
robust mean, over loops already seen, of (position - home). Anchoring to homes instead of
summing frame-to-frame steps keeps detection noise from accumulating as a random walk
(with 0.2 px noise and 50 loops, summed steps wander ~1 px in 500 frames; homes stay ~0.1 px).
Loops that really move (glide, mis-links) are rejected as outliers around the median.

Only loops wholly inside the frame measure drift or move homes on (``inside_frame``): the frame's
edge cuts a loop, and the cut loop is found with its centre pulled inside the frame. As the stage
drifts, loops enter and leave across the edges, each new home took that bias, and the error grew
with every generation of tracks (measured through the real models, 520 frames at (0.3, -0.2)
px/frame: the estimate fell behind the truth by ~0.4 % of the drift, 0.97 px at the end).

Drift is cumulative since the session's first frame, (x, y) in px: a loop at sample position p
appears at p + drift.

Its uncertainty (one sigma per axis) has two parts. The frame's own: the standard error of the
mean of the matched displacements kept. And what the homes inherit: a home is a mean of positions
corrected with earlier drift estimates, so their errors stay in it; each home carries the mean
variance of the drifts that corrected its detections, and the frame adds the mean over the homes
it matched. Tracks die and are replaced by tracks whose homes carry today's error, so without that
part the errors of the past generations would be an offset no standard error sees (with 16 loops a
frame: 40 % of frames off by more than 3 standard errors). Adding them as fully correlated
over-states the sigma somewhat (measured: true error about half of it), never under-states it.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import pandas as pd

EDGE_MARGIN_PX = 1.0  # a loop this close to the frame's edge may already be cut by it


def inside_frame(
    x_px: np.ndarray, y_px: np.ndarray, major_px: np.ndarray, width_px: float, height_px: float
) -> np.ndarray:
    """Which loops lie wholly inside the frame: their major-axis circle ``EDGE_MARGIN_PX`` from
    every edge.

    >>> inside_frame(np.array([10.0, 3.0]), np.array([10.0, 10.0]), np.array([8.0, 8.0]), 20, 20).tolist()
    [True, False]
    """
    reach = major_px / 2 + EDGE_MARGIN_PX
    return (x_px >= reach) & (y_px >= reach) & (x_px <= width_px - reach) & (y_px <= height_px - reach)


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


def inliers(dx: np.ndarray, dy: np.ndarray, floor_px: float = 0.5) -> np.ndarray:
    """Which 2-D displacements lie near (<= 3 MAD, or ``floor_px``) their median: the ones to average.

    >>> inliers(np.array([1.0, 1.1, 0.9, 9.0]), np.zeros(4)).tolist()
    [True, True, True, False]
    """
    radius = np.hypot(dx - median(dx), dy - median(dy))
    return radius <= max(3.0 * 1.4826 * median(radius), floor_px)


class DriftEstimate(NamedTuple):
    """One frame's drift (px), its one-sigma uncertainty per axis (px) and the matched loops behind it.

    The sigma is NaN where no loop matched (the drift extrapolated) and 0 at the first frame (the
    origin, by definition).
    """

    x_px: float
    y_px: float
    sigma_x_px: float
    sigma_y_px: float
    matched: int


def _sigma(displacements: np.ndarray, inherited_variances: np.ndarray) -> float:
    """One axis' sigma: the standard error of the mean displacement plus the homes' inherited
    variance (NaN with fewer than two displacements: no spread to measure).

    >>> _sigma(np.array([1.0, 3.0]), np.array([0.5, 1.5]))
    1.4142135623730951
    """
    n = len(displacements)
    if n < 2:
        return float("nan")
    return float(np.sqrt(np.var(displacements, ddof=1) / n + np.mean(inherited_variances)))


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
        # detections inside the frame, mean corrected x, mean corrected y, mean inherited variance
        # x, y, last ordinal; a track seen only at the edge so far has a provisional home (count 0)
        self._homes = np.empty((0, 6))

    def predict(self) -> tuple[float, float]:
        return predicted_drift(self.drift, self.previous)

    def update(
        self, track_ids: np.ndarray, x_px: np.ndarray, y_px: np.ndarray, inside: np.ndarray, ordinal: int
    ) -> DriftEstimate:
        """Estimate the drift of a new frame from its linked loops wholly ``inside`` the frame, then
        move the homes on."""
        rows = self._rows(track_ids)
        measuring = (rows >= 0) & inside
        measuring[measuring] = self._homes[rows[measuring], 0] > 0  # a provisional home measures nothing
        if measuring.any():
            homes = self._homes[rows[measuring]]
            dx, dy = x_px[measuring] - homes[:, 1], y_px[measuring] - homes[:, 2]
            keep = inliers(dx, dy)
            n = int(keep.sum())
            estimate = DriftEstimate(
                float(np.mean(dx[keep])),
                float(np.mean(dy[keep])),
                _sigma(dx[keep], homes[keep, 3]),
                _sigma(dy[keep], homes[keep, 4]),
                n,
            )
        elif ordinal == 0:
            estimate = DriftEstimate(0.0, 0.0, 0.0, 0.0, 0)
        else:  # nothing to anchor on: keep moving at the last velocity
            estimate = DriftEstimate(*self.predict(), np.nan, np.nan, 0)
        self.previous, self.drift = self.drift, (estimate.x_px, estimate.y_px)
        self._add(track_ids, rows, x_px - estimate.x_px, y_px - estimate.y_px, inside, estimate, ordinal)
        return estimate

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
        inside: np.ndarray,
        estimate: DriftEstimate,
        ordinal: int,
    ) -> None:
        """Fold corrected positions of loops inside the frame, and the variance of the drift that
        corrected them, into the homes (running means, so a stored home restores exactly); a loop
        at the edge only keeps its track's home alive, or gives a new track a provisional one
        (count 0, replaced by its first position inside). Where that variance is unknown (NaN),
        the homes inherit none from this frame."""
        variance_x, variance_y = np.nan_to_num([estimate.sigma_x_px**2, estimate.sigma_y_px**2])
        known = rows >= 0
        homes = self._homes
        homes[rows[known], 5] = ordinal
        fold = known & inside
        at = rows[fold]
        homes[at, 0] += 1.0
        homes[at, 1] += (x_corrected_px[fold] - homes[at, 1]) / homes[at, 0]
        homes[at, 2] += (y_corrected_px[fold] - homes[at, 2]) / homes[at, 0]
        homes[at, 3] += (variance_x - homes[at, 3]) / homes[at, 0]
        homes[at, 4] += (variance_y - homes[at, 4]) / homes[at, 0]
        new = ~known
        if new.any():
            count = int(new.sum())
            fresh = np.column_stack(
                [
                    inside[new].astype(float),
                    x_corrected_px[new],
                    y_corrected_px[new],
                    np.full(count, variance_x),
                    np.full(count, variance_y),
                    np.full(count, ordinal),
                ]
            )
            self._set(np.concatenate([self._track_ids, track_ids[new]]), np.concatenate([homes, fresh]))
        horizon = ordinal - self.memory_frames - 1
        if len(self._track_ids) > 2 * len(track_ids) + 64:  # prune now and then, not every frame
            kept = self._homes[:, 5] >= horizon
            self._set(self._track_ids[kept], self._homes[kept])

    def _set(self, track_ids: np.ndarray, homes: np.ndarray) -> None:
        order = np.argsort(track_ids, kind="stable")
        self._track_ids, self._homes = track_ids[order].astype(np.int64), homes[order]

    def homes_of(self, track_ids: np.ndarray) -> np.ndarray:
        """``(n, 5)`` detections so far, home x and y (px), inherited variance x and y (px²) of each
        track, as stored per detection."""
        return self._homes[self._rows(track_ids), :5].reshape(-1, 5)

    def restore(
        self, drift: tuple[float, float], previous: tuple[float, float], latest: pd.DataFrame
    ) -> None:
        """Rebuild from stored state: the last two drifts and the latest stored home of each track
        seen within the linker's memory (columns ``track_id, track_detections, home_x_px,
        home_y_px, home_variance_x_px2, home_variance_y_px2, ordinal``); older homes can never be
        used again, since their tracks cannot link. Variances stored as NULL (homes written before
        they were kept) count as 0.
        """
        self.drift, self.previous = drift, previous
        columns = [
            "track_detections",
            "home_x_px",
            "home_y_px",
            "home_variance_x_px2",
            "home_variance_y_px2",
            "ordinal",
        ]
        homes = np.nan_to_num(latest[columns].to_numpy(float).reshape(-1, 6))
        self._set(latest.track_id.to_numpy(np.int64), homes)
