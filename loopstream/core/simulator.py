"""A simulated in-situ TEM microscope: bright-field frames of dislocation loops with ground truth.

Plays the role of trackpy's ``artificial.py``: tests, demos, benchmarks and model pretraining all
draw frames from it. Everything is a pure function of ``(config, seed, frame index)``, so any frame
can be re-rendered (e.g. to resend it after a failure) and two runs with one seed are identical.

Physics, simplified: loops nucleate at a constant rate per unit area, grow linearly in diameter,
and vanish after an exponentially distributed lifetime; now and then a loop coalesces into a
touching neighbour, which takes over its area (D jumps to sqrt(D_a^2 + D_b^2)); the stage drifts
at a constant velocity (in pixels per frame), so every loop moves with it. Bright-field contrast: a
loop is a dark elliptical blob with a darker rim, on a background of slowly varying thickness contrast, a few
dark bend contours / dislocation lines, and shot noise.

Examples
--------
>>> mic = SimulatedMicroscope(SimulationConfig(shape=(256, 256)), seed=1)
>>> frame = mic.frame(0)
>>> frame.image.shape, frame.image.dtype.name
((256, 256), 'uint16')
>>> sorted(frame.truth.columns)
['angle_deg', 'frame', 'loop_id', 'major_px', 'minor_px', 'x_px', 'y_px']
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import pandas as pd

TRUTH_COLUMNS = ["frame", "loop_id", "x_px", "y_px", "major_px", "minor_px", "angle_deg"]


@dataclass(frozen=True)
class SimulationConfig:
    """Parameters of a simulated experiment; lengths in pixels, times in frames unless named."""

    shape: tuple[int, int] = (512, 512)
    dtype: str = "uint16"
    pixel_size_nm: float = 0.390625
    frame_rate_hz: float = 10.0
    dose_rate_ions_cm2_s: float = 1.0e11
    n_frames: int = 1000
    initial_loops: int = 12  # loops present at frame 0 per 512 x 512 px of field
    nucleation_per_frame: float = 0.03  # new loops per frame per 512 x 512 px of field
    mean_lifetime_frames: float = 400.0
    coalescences: int = 0  # loops that coalesce into a neighbour during the run (whole field)
    initial_major_px: tuple[float, float] = (14.0, 40.0)  # uniform range of the starting major axis
    aspect_range: tuple[float, float] = (0.55, 0.9)  # minor / major
    growth_px_per_frame: tuple[float, float] = (0.0, 0.04)  # uniform range of dD/dt
    max_major_px: float = 70.0
    drift_px_per_frame: tuple[float, float] = (0.15, -0.08)  # stage velocity (x, y)
    loop_contrast: float = 0.32  # depth of a loop's core relative to the background mean
    background_mean: float = 130.0  # on the 8-bit scale; uint16 frames are scaled by 64
    noise_sigma: float = 22.0  # on the 8-bit scale
    bend_contours: int = 2


@dataclass(frozen=True)
class SimulatedFrame:
    index: int
    timestamp_s: float
    image: np.ndarray
    truth: pd.DataFrame  # TRUTH_COLUMNS, one row per loop whose centre lies in the frame


class SimulatedMicroscope:
    """Deterministic frames and ground truth for one simulated experiment."""

    def __init__(self, config: SimulationConfig | None = None, seed: int = 0) -> None:
        self.config = config or SimulationConfig()
        self.seed = seed
        self.loops = _loop_population(self.config, np.random.default_rng([seed, 0]))
        self._margin = int(np.ceil(np.abs(self.config.drift_px_per_frame).max() * self.config.n_frames)) + 80
        self._background = _background(self.config, self._margin, np.random.default_rng([seed, 1]))

    def stage_offset(self, index: int) -> tuple[float, float]:
        """Stage displacement (x, y) in px at frame ``index``; the sample appears to move by it."""
        vx, vy = self.config.drift_px_per_frame
        return vx * index, vy * index

    def truth(self, index: int) -> pd.DataFrame:
        """Ellipses of the loops visible in frame ``index`` (centre inside the field), in frame px."""
        return self._ellipses(index, margin_px=0.0)

    def _ellipses(self, index: int, margin_px: float) -> pd.DataFrame:
        """Loops alive at ``index`` whose centre lies within ``margin_px`` of the field."""
        c, loops = self.config, self.loops
        sub = loops[(loops["birth"] <= index) & (loops["death"] > index)]
        dx, dy = self.stage_offset(index)
        grown = sub["major0"] + sub["growth"] * (index - sub["birth"]).clip(lower=0)
        major = np.minimum(grown + sub["jump_px"] * (index >= sub["jump_frame"]), c.max_major_px)
        out = pd.DataFrame(
            {
                "frame": index,
                "loop_id": sub.index.to_numpy(),
                "x_px": sub["x"].to_numpy() + dx,
                "y_px": sub["y"].to_numpy() + dy,
                "major_px": major.to_numpy(),
                "minor_px": (major * sub["aspect"]).to_numpy(),
                "angle_deg": sub["angle"].to_numpy(),
            }
        )
        h, w = c.shape
        m = margin_px
        inside = (out.x_px >= -m) & (out.x_px < w + m) & (out.y_px >= -m) & (out.y_px < h + m)
        return out[inside].reset_index(drop=True)

    def render(self, index: int) -> np.ndarray:
        """The camera image of frame ``index`` in the configured dtype."""
        c = self.config
        h, w = c.shape
        dx, dy = self.stage_offset(index)
        # The background moves with the sample: sample point (X, Y) appears at (X + dx, Y + dy).
        shift = np.array([[1, 0, dx - self._margin], [0, 1, dy - self._margin]], np.float32)
        image = cv2.warpAffine(self._background, shift, (w, h), flags=cv2.INTER_LINEAR)
        for loop in self._ellipses(index, margin_px=c.max_major_px / 2 + 3).itertuples(index=False):
            _stamp_loop(image, loop, c.loop_contrast * c.background_mean)
        image = cv2.GaussianBlur(image, (0, 0), 1.2)
        rng = np.random.default_rng([self.seed, 2, index])
        image = image + rng.standard_normal(image.shape, dtype=np.float32) * np.float32(c.noise_sigma)
        if c.dtype == "uint8":
            return np.clip(image, 0, 255).astype(np.uint8)
        return np.clip(image * 64.0, 0, 65535).astype(np.uint16)

    def frame(self, index: int) -> SimulatedFrame:
        return SimulatedFrame(index, index / self.config.frame_rate_hz, self.render(index), self.truth(index))

    def frames(self, n: int | None = None, start: int = 0) -> Iterator[SimulatedFrame]:
        stop = self.config.n_frames if n is None else start + n
        for index in range(start, stop):
            yield self.frame(index)


def _loop_population(c: SimulationConfig, rng: np.random.Generator) -> pd.DataFrame:
    """All loops of the experiment in sample coordinates (frame-0 pixels), indexed by loop id."""
    h, w = c.shape
    # The field the stage sweeps over, so that loops drift in from the edges too.
    vx, vy = c.drift_px_per_frame
    x_lo, x_hi = sorted((0.0, -vx * c.n_frames))
    y_lo, y_hi = sorted((0.0, -vy * c.n_frames))
    x_lo, x_hi, y_lo, y_hi = x_lo - 20, x_hi + w + 20, y_lo - 20, y_hi + h + 20
    swept = (x_hi - x_lo) * (y_hi - y_lo) / 512.0**2
    n_initial = rng.poisson(c.initial_loops * swept)
    n_new = rng.poisson(c.nucleation_per_frame * swept * c.n_frames)
    # Initial loops were born before frame 0 with a lifetime still to run (memoryless).
    birth = np.concatenate([np.full(n_initial, -1), np.sort(rng.uniform(0, c.n_frames, n_new)).astype(int)])
    n = birth.size
    lifetime = rng.exponential(c.mean_lifetime_frames, n).astype(int) + 5
    major0 = rng.uniform(*c.initial_major_px, n)
    x = np.empty(n)
    y = np.empty(n)
    for i in range(n):  # rejection sampling keeps loops from overlapping much
        for _ in range(30):
            x[i] = rng.uniform(x_lo, x_hi)
            y[i] = rng.uniform(y_lo, y_hi)
            coexist = (birth[:i] < birth[i] + lifetime[i]) & (birth[:i] + lifetime[:i] > birth[i])
            gap = np.hypot(x[:i] - x[i], y[:i] - y[i]) - 0.5 * (c.max_major_px * 0.6 + major0[i])
            if not np.any(coexist & (gap < 0)):
                break
    loops = pd.DataFrame(
        {
            "birth": birth,
            "death": birth + lifetime,
            "x": x,
            "y": y,
            "major0": major0,
            "aspect": rng.uniform(*c.aspect_range, n),
            "angle": rng.uniform(0, 180, n),
            "growth": rng.uniform(*c.growth_px_per_frame, n),
            "jump_frame": np.iinfo(np.int64).max,  # coalescence: when the loop takes over a neighbour
            "jump_px": 0.0,
        },
        index=pd.RangeIndex(n, name="loop_id"),
    )
    return _coalescing(loops, c, rng) if c.coalescences else loops


def _coalescing(loops: pd.DataFrame, c: SimulationConfig, rng: np.random.Generator) -> pd.DataFrame:
    """``loops`` plus ``c.coalescences`` loops that each live beside a host loop and coalesce into it.

    Each newcomer sits touching its host (centres (D_a + D_b) / 2 apart at the coalescence, so the
    ellipses meet), is 70-100 % of the host's size, lives 80-200 frames, and dies at the frame the
    host's diameter jumps to sqrt(D_a^2 + D_b^2) (the loops' areas add). Hosts are alive for at least
    120 frames around the event, in the field, and host one event each.
    """
    h, w = c.shape
    vx, vy = c.drift_px_per_frame
    rows: list[dict[str, float]] = []
    used: set[int] = set()
    for _ in range(50 * c.coalescences):
        if len(rows) == c.coalescences:
            break
        when = int(rng.uniform(150, c.n_frames - 60))
        host = rng.integers(len(loops))
        b = loops.iloc[host]
        x, y = b.x + vx * when, b.y + vy * when  # frame position at the event
        if host in used or not (b.birth < when - 120 and b.death > when + 60) or b.jump_px:
            continue
        if not (0.15 * w < x < 0.85 * w and 0.15 * h < y < 0.85 * h):
            continue
        d_host = min(b.major0 + b.growth * (when - b.birth), c.max_major_px)
        d_new = d_host * rng.uniform(0.7, 1.0)
        life = int(rng.uniform(80, 200))
        angle = rng.uniform(0, 2 * np.pi)
        spacing = (d_host + d_new) / 2  # major axes: the ellipses touch along the line of centres
        rows.append(
            {
                "birth": when - life,
                "death": when,
                "x": b.x + spacing * np.cos(angle),
                "y": b.y + spacing * np.sin(angle),
                "major0": d_new,  # no growth of its own: its size at the event is d_new
                "aspect": b.aspect,
                "angle": b.angle,
                "growth": 0.0,
                "jump_frame": np.iinfo(np.int64).max,
                "jump_px": 0.0,
            }
        )
        loops.loc[loops.index[host], ["jump_frame", "jump_px"]] = when, np.hypot(d_host, d_new) - d_host
        used.add(host)
    added = pd.DataFrame(rows, index=pd.RangeIndex(len(loops), len(loops) + len(rows), name="loop_id"))
    return pd.concat([loops, added])


def _background(c: SimulationConfig, margin: int, rng: np.random.Generator) -> np.ndarray:
    """Static thickness contrast and bend contours of the whole swept field (float32, 8-bit scale)."""
    h, w = c.shape[0] + 2 * margin, c.shape[1] + 2 * margin
    coarse = rng.standard_normal((max(2, h // 96), max(2, w // 96))).astype(np.float32)
    field = cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC) * np.float32(10.0)
    field += np.float32(c.background_mean)
    lines = np.zeros((h, w), np.float32)
    for _ in range(round(c.bend_contours * max(1.0, (h * w) / 1024.0**2))):
        p0 = (int(rng.uniform(0, w)), int(rng.uniform(0, h)))
        ang = rng.uniform(0, np.pi)
        length = rng.uniform(0.5, 1.5) * max(h, w)
        p1 = (int(p0[0] + length * np.cos(ang)), int(p0[1] + length * np.sin(ang)))
        cv2.line(lines, p0, p1, (float(rng.uniform(25, 45)),), thickness=int(rng.uniform(12, 40)))
    return field - cv2.GaussianBlur(lines, (0, 0), 9.0)


def _stamp_loop(image: np.ndarray, loop: Any, depth: float) -> None:
    """Darken ``image`` in place by one loop (a row of ``itertuples``: x_px, y_px, major_px,
    minor_px, angle_deg): a filled ellipse with soft edges and a darker rim."""
    a, b = loop.major_px / 2.0, loop.minor_px / 2.0
    r = int(np.ceil(a)) + 3
    cx, cy = loop.x_px, loop.y_px
    x0, x1 = max(int(cx) - r, 0), min(int(cx) + r + 1, image.shape[1])
    y0, y1 = max(int(cy) - r, 0), min(int(cy) + r + 1, image.shape[0])
    if x0 >= x1 or y0 >= y1:
        return
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    t = np.deg2rad(loop.angle_deg)
    u = (xx - cx) * np.cos(t) + (yy - cy) * np.sin(t)
    v = -(xx - cx) * np.sin(t) + (yy - cy) * np.cos(t)
    rho = np.sqrt((u / a) ** 2 + (v / b) ** 2)  # 1 on the ellipse
    edge = 1.0 / (1.0 + np.exp((rho - 1.0) * 12.0))
    rim = np.exp(-(((rho - 0.85) / 0.18) ** 2))
    image[y0:y1, x0:x1] -= np.float32(depth) * (0.6 * edge + 0.5 * rim).astype(np.float32)
