"""Detector-like detections from the simulator's ground truth, for tests and benchmarks.

The simulator's truth is exact; a real detector is not. ``detections`` adds what matters to a
tracker: centre and size jitter (px), missed loops and false positives, all seeded, so a frame's
detections can be regenerated identically (e.g. to resend it after a crash).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from loopstream.core.simulator import SimulatedMicroscope
from loopstream.tracker.validation import LOOP_COLUMNS


@dataclass(frozen=True)
class DetectorNoise:
    position_px: float = 0.2  # sd of centre jitter
    size_px: float = 0.3  # sd of axis jitter
    miss_rate: float = 0.02  # probability that a loop is not detected in a frame
    false_per_frame: float = 0.5  # mean number of spurious loops per frame


def detections(mic: SimulatedMicroscope, index: int, noise: DetectorNoise = DetectorNoise()) -> pd.DataFrame:
    """LOOP_COLUMNS plus the true ``loop_id`` (-1 for false positives) of frame ``index``."""
    truth = mic.truth(index)
    rng = np.random.default_rng([mic.seed, 7, index])
    truth = truth[rng.random(len(truth)) >= noise.miss_rate]
    n = len(truth)
    major = np.maximum(truth.major_px.to_numpy() + rng.normal(0, noise.size_px, n), 1.0)
    minor = np.minimum(np.maximum(truth.minor_px.to_numpy() + rng.normal(0, noise.size_px, n), 1.0), major)
    x = truth.x_px.to_numpy() + rng.normal(0, noise.position_px, n)
    y = truth.y_px.to_numpy() + rng.normal(0, noise.position_px, n)
    h, w = mic.config.shape
    n_false = rng.poisson(noise.false_per_frame)
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
