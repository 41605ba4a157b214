"""Detector-like detections from the simulator's ground truth, for tests and benchmarks.

The simulator's truth is exact; a real detector is not. :class:`DetectorNoise` is the detection
model between truth and tracker, set by default to what the shipped models do on simulated
frames (issue 15: recall 72-75 %): a quarter of the loops missed in any frame, a false detection
for every ten loops, 15 % noise on each axis, centres jittered, and touching loops now and then
detected as one larger loop. All of it is seeded per frame, so a frame's detections can be
regenerated identically (e.g. to resend it after a crash).

Examples
--------
>>> from loopstream.core.simulator import SimulationConfig
>>> mic = SimulatedMicroscope(SimulationConfig(shape=(512, 512), initial_loops=60), seed=0)
>>> found = detections(mic, 0)
>>> truth = mic.truth(0)
>>> real = found[found.loop_id >= 0]
>>> 0.6 < len(set(real.loop_id)) / len(truth) < 0.9, bool((found.loop_id == -1).any())
(True, True)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from loopstream.core.detections import LOOP_COLUMNS
from loopstream.core.simulator import SimulatedMicroscope


@dataclass(frozen=True)
class DetectorNoise:
    position_px: float = 0.3  # sd of centre jitter (px)
    size_fraction: float = 0.15  # sd of each axis' relative error
    miss_rate: float = 0.25  # probability that a loop is not detected in a frame (recall 75 %)
    false_rate: float = 0.10  # mean false detections per loop in the frame
    merge_rate: float = 0.2  # probability that two touching loops are detected as one, per frame
    edge_cut: bool = True  # a loop the frame's edge cuts is found by its visible part (cut_centres)


# A near-perfect detector, for tests of plumbing rather than of tracking under noise.
CLEAN = DetectorNoise(
    position_px=0.2, size_fraction=0.01, miss_rate=0.02, false_rate=0.01, merge_rate=0.0, edge_cut=False
)


def cut_centres(centre_px: np.ndarray, major_px: np.ndarray, side_px: int) -> np.ndarray:
    """Centres along one axis as a segmentation finds loops the frame's edge cuts: the middle of
    the visible part of each loop's extent, pulled inside the frame (what real models do).

    >>> cut_centres(np.array([2.0, 50.0]), np.array([10.0, 10.0]), 100).tolist()
    [3.5, 50.0]
    """
    return (np.maximum(centre_px - major_px / 2, 0.0) + np.minimum(centre_px + major_px / 2, side_px)) / 2


def merged(truth: pd.DataFrame, merge_rate: float, rng: np.random.Generator) -> pd.DataFrame:
    """``truth`` with some touching pairs (centres closer than the sum of their mean radii) replaced
    by one loop covering both, at their area-weighted centre, with the larger one's id."""
    if merge_rate <= 0 or len(truth) < 2:
        return truth
    xy = truth[["x_px", "y_px"]].to_numpy()
    major, minor = truth.major_px.to_numpy(), truth.minor_px.to_numpy()
    gap = np.hypot(*(xy[:, None, :] - xy[None, :, :]).transpose(2, 0, 1))
    radius = (major + minor) / 4
    i, j = np.nonzero(np.triu(gap < radius[:, None] + radius[None, :], k=1))
    pick = rng.random(len(i)) < merge_rate
    x, y = xy[:, 0].copy(), xy[:, 1].copy()
    major_out, minor_out = major.copy(), minor.copy()
    gone = np.zeros(len(truth), bool)
    for a, b in zip(i[pick].tolist(), j[pick].tolist(), strict=True):
        if gone[a] or gone[b]:
            continue
        big, small = (a, b) if major[a] >= major[b] else (b, a)
        w_big, w_small = major[big] * minor[big], major[small] * minor[small]
        x[big] = (w_big * xy[big, 0] + w_small * xy[small, 0]) / (w_big + w_small)
        y[big] = (w_big * xy[big, 1] + w_small * xy[small, 1]) / (w_big + w_small)
        major_out[big] = gap[a, b] + (major[a] + major[b]) / 2
        minor_out[big] = max(minor[a], minor[b])
        gone[small] = True
    out = truth.assign(x_px=x, y_px=y, major_px=major_out, minor_px=minor_out)
    return out[~gone].reset_index(drop=True)


def detections(mic: SimulatedMicroscope, index: int, noise: DetectorNoise = DetectorNoise()) -> pd.DataFrame:
    """LOOP_COLUMNS plus the true ``loop_id`` (-1 for false positives) of frame ``index``."""
    truth = mic.truth(index)
    rng = np.random.default_rng([mic.seed, 7, index])
    n_false = rng.poisson(noise.false_rate * len(truth))
    truth = merged(truth, noise.merge_rate, rng)
    truth = truth[rng.random(len(truth)) >= noise.miss_rate]
    n = len(truth)
    major = np.maximum(truth.major_px.to_numpy() * (1 + rng.normal(0, noise.size_fraction, n)), 1.0)
    minor = truth.minor_px.to_numpy() * (1 + rng.normal(0, noise.size_fraction, n))
    minor = np.minimum(np.maximum(minor, 1.0), major)
    h, w = mic.config.shape
    x, y = truth.x_px.to_numpy(), truth.y_px.to_numpy()
    if noise.edge_cut:
        true_major = truth.major_px.to_numpy()
        x, y = cut_centres(x, true_major, w), cut_centres(y, true_major, h)
    x = x + rng.normal(0, noise.position_px, n)
    y = y + rng.normal(0, noise.position_px, n)
    f_major = rng.uniform(*mic.config.initial_major_px, n_false)
    x = np.concatenate([x, rng.uniform(0, w, n_false)])
    y = np.concatenate([y, rng.uniform(0, h, n_false)])
    major = np.concatenate([major, f_major])
    minor = np.concatenate([minor, f_major * 0.7])
    return pd.DataFrame(
        {
            "score": np.concatenate([np.full(n, 0.9), np.full(n_false, 0.5)]),
            "x_px": x,
            "y_px": y,
            "major_px": major,
            "minor_px": minor,
            "angle_deg": np.concatenate([truth.angle_deg.to_numpy(), rng.uniform(0, 180, n_false)]),
            "area_px": np.pi / 4 * major * minor,
            "bbox_x_px": x - major / 2,
            "bbox_y_px": y - major / 2,
            "bbox_width_px": major,
            "bbox_height_px": major,
            "loop_id": np.concatenate([truth.loop_id.to_numpy(), np.full(n_false, -1)]),
        },
        columns=[*LOOP_COLUMNS, "loop_id"],
    )
