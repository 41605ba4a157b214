"""The numbers physicists read (DESIGN.md section 4), as small pure functions over DataFrames.

Units: positions and axes of detections in px; ``pixel_size_nm`` converts; times in s; fluence in
ions/cm^2 = dose rate [ions/cm^2/s] x time [s]; areal density per um^2. Dose in dpa = fluence x the
session's ``dpa_per_ion_cm2``, the displacement cross-section the user computes with SRIM for the
ion, energy and target (e.g. its vacancy.txt displacements per ion per Angstrom at the depth the
microscope sees, x 1e8 / atoms per cm^3).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats

from loopstream.tracker.drift import DriftEstimate

# A slope over fewer detections is mostly detection noise (sizes scatter ~15 % per frame).
MIN_FRAMES_FOR_GROWTH = 20
# Theil-Sen looks at every pair of points; thinning a long track evenly to this many keeps the
# cost bounded (n^2 pairs) at no visible loss: the slope's error is set by the time span.
GROWTH_FIT_POINTS = 200


def frame_statistics(
    major_px: np.ndarray,
    minor_px: np.ndarray,
    width_px: int,
    height_px: int,
    pixel_size_nm: float,
    timestamp_s: float,
    dose_rate_ions_cm2_s: float,
) -> dict[str, float]:
    """N, density, mean D / Dm (NaN without loops), foreground % from ellipse areas, fluence.

    >>> s = frame_statistics(np.array([10.0]), np.array([5.0]), 100, 100, 2.0, 3.0, 1e11)
    >>> s["loop_count"], round(s["density_per_um2"], 1), s["mean_major_nm"], s["fluence_ions_cm2"]
    (1, 25.0, 20.0, 300000000000.0)
    """
    n = len(major_px)
    field_um2 = (width_px * pixel_size_nm * 1e-3) * (height_px * pixel_size_nm * 1e-3)
    ellipse_px2 = float(np.sum(np.pi / 4.0 * major_px * minor_px))
    return {
        "loop_count": n,
        "density_per_um2": n / field_um2,
        "mean_major_nm": float(np.mean(major_px)) * pixel_size_nm if n else float("nan"),
        "mean_minor_nm": float(np.mean(minor_px)) * pixel_size_nm if n else float("nan"),
        "foreground_percent": 100.0 * ellipse_px2 / (width_px * height_px),
        "fluence_ions_cm2": dose_rate_ions_cm2_s * timestamp_s,
    }


def frame_drift(estimate: DriftEstimate, pixel_size_nm: float) -> dict[str, float]:
    """A frame's cumulative drift and its one-sigma uncertainty, in px and nm, and the matched loops
    it was averaged over.

    >>> row = frame_drift(DriftEstimate(2.0, -1.0, 0.1, 0.2, 40), 0.5)
    >>> row["drift_x_nm"], row["drift_y_nm"], row["drift_sigma_y_nm"], row["drift_matched_count"]
    (1.0, -0.5, 0.1, 40)
    """
    return {
        "drift_x_px": estimate.x_px,
        "drift_y_px": estimate.y_px,
        "drift_x_nm": estimate.x_px * pixel_size_nm,
        "drift_y_nm": estimate.y_px * pixel_size_nm,
        "drift_sigma_x_px": estimate.sigma_x_px,
        "drift_sigma_y_px": estimate.sigma_y_px,
        "drift_sigma_x_nm": estimate.sigma_x_px * pixel_size_nm,
        "drift_sigma_y_nm": estimate.sigma_y_px * pixel_size_nm,
        "drift_matched_count": estimate.matched,
    }


def with_dose(frames: pd.DataFrame, dpa_per_ion_cm2: float) -> pd.DataFrame:
    """``frames`` with ``dose_dpa`` = fluence x the session's dpa per ion/cm^2 (0 when unknown).

    >>> with_dose(pd.DataFrame({"fluence_ions_cm2": [0.0, 2e14]}), 1e-15).dose_dpa.tolist()
    [0.0, 0.2]
    """
    return frames.assign(dose_dpa=frames.fluence_ions_cm2 * dpa_per_ion_cm2)


def tracks_table(detections: pd.DataFrame, frames: pd.DataFrame, pixel_size_nm: float) -> pd.DataFrame:
    """One row per track: birth/death frame and time, length, lifetime, displacement, growth rate.

    ``detections`` has ``frame_index, track_id, major_px, minor_px, x_corrected_px,
    y_corrected_px``; ``frames`` maps ``frame_index`` to ``timestamp_s``. Displacement is
    drift-corrected (first to last point, nm). Growth rate dD/dt (nm/s) is the Theil-Sen slope of
    the major axis against time, with the half-width of its 95 % confidence interval, for tracks
    of at least ``MIN_FRAMES_FOR_GROWTH`` detections (NaN otherwise): the median of pairwise slopes
    shrugs off the merged and mis-sized detections a least-squares fit follows.
    """
    d = detections.merge(frames[["frame_index", "timestamp_s"]], on="frame_index", how="left")
    d = d.assign(major_nm=d.major_px * pixel_size_nm, minor_nm=d.minor_px * pixel_size_nm)
    g = d.groupby("track_id", sort=True)
    first, last = g.first(), g.last()
    n = g.size()
    growth = pd.DataFrame(
        [
            growth_rate(t.timestamp_s.to_numpy(), t.major_nm.to_numpy())
            for _, t in g[["timestamp_s", "major_nm"]]
        ],
        index=n.index,
        columns=["growth_rate_nm_s", "growth_rate_ci95_nm_s"],
    )
    out = pd.DataFrame(
        {
            "birth_frame": first.frame_index,
            "death_frame": last.frame_index,
            "length": n,
            "birth_s": first.timestamp_s,
            "death_s": last.timestamp_s,
            "lifetime_s": last.timestamp_s - first.timestamp_s,
            "displacement_nm": np.hypot(
                last.x_corrected_px - first.x_corrected_px, last.y_corrected_px - first.y_corrected_px
            )
            * pixel_size_nm,
            "mean_major_nm": g.major_nm.mean(),
            "mean_minor_nm": g.minor_nm.mean(),
            "growth_rate_nm_s": growth.growth_rate_nm_s,
            "growth_rate_ci95_nm_s": growth.growth_rate_ci95_nm_s,
        }
    )
    out.index.name = "track_id"
    return out.reset_index()


def track_points(
    detections: pd.DataFrame, frames: pd.DataFrame, track_ids: pd.Series, pixel_size_nm: float
) -> pd.DataFrame:
    """The detections of the given tracks, by track then frame, with their time and sizes in nm.

    Columns: ``track_id, frame_index, timestamp_s, x_px, y_px, x_corrected_px, y_corrected_px,
    major_nm, minor_nm``.

    >>> d = pd.DataFrame({"frame_index": [0, 0, 1], "track_id": [4, 7, 4], "x_px": [1.0, 9.0, 2.0],
    ...     "y_px": 0.0, "x_corrected_px": 0.0, "y_corrected_px": 0.0, "major_px": [4.0, 6.0, 5.0],
    ...     "minor_px": 2.0})
    >>> f = pd.DataFrame({"frame_index": [0, 1], "timestamp_s": [0.0, 0.5]})
    >>> track_points(d, f, pd.Series([4]), 2.0)[["frame_index", "timestamp_s", "major_nm"]].values.tolist()
    [[0.0, 0.0, 8.0], [1.0, 0.5, 10.0]]
    """
    points = detections[detections.track_id.isin(track_ids)]
    points = points.merge(frames[["frame_index", "timestamp_s"]], on="frame_index")
    points = points.sort_values(["track_id", "frame_index"], kind="stable")
    return pd.DataFrame(
        {
            "track_id": points.track_id,
            "frame_index": points.frame_index,
            "timestamp_s": points.timestamp_s,
            "x_px": points.x_px,
            "y_px": points.y_px,
            "x_corrected_px": points.x_corrected_px,
            "y_corrected_px": points.y_corrected_px,
            "major_nm": points.major_px * pixel_size_nm,
            "minor_nm": points.minor_px * pixel_size_nm,
        }
    ).reset_index(drop=True)


def growth_rate(time_s: np.ndarray, major_nm: np.ndarray) -> tuple[float, float]:
    """Theil-Sen dD/dt (nm/s) and the half-width of its 95 % confidence interval; NaN, NaN for
    fewer than ``MIN_FRAMES_FOR_GROWTH`` points or no time span.

    >>> t = np.arange(40.0)
    >>> D = 10 + 0.5 * t
    >>> D[::7] += 30  # merged or mis-sized detections
    >>> [round(v, 3) for v in growth_rate(t, D)]
    [0.5, 0.0]
    """
    if len(time_s) < MIN_FRAMES_FOR_GROWTH or np.ptp(time_s) <= 0:
        return float("nan"), float("nan")
    if len(time_s) > GROWTH_FIT_POINTS:
        keep = np.linspace(0, len(time_s) - 1, GROWTH_FIT_POINTS).round().astype(int)
        time_s, major_nm = time_s[keep], major_nm[keep]
    fit = stats.theilslopes(major_nm, time_s - time_s[0], alpha=0.95)
    return float(fit.slope), float((fit.high_slope - fit.low_slope) / 2)


def drift_rate(frames: pd.DataFrame) -> tuple[float, float]:
    """Least-squares slope of the cumulative drift (x, y) in px per frame (NaN with < 2 frames)."""
    if len(frames) < 2:
        return float("nan"), float("nan")
    t = frames.frame_index.to_numpy(float)
    return (
        float(np.polyfit(t, frames.drift_x_px.to_numpy(), 1)[0]),
        float(np.polyfit(t, frames.drift_y_px.to_numpy(), 1)[0]),
    )


def session_summary(frames: pd.DataFrame, detections: pd.DataFrame, session: dict) -> dict[str, float]:
    """Means over frames, drift rates, lifetimes, free paths, nucleation, loss and coalescence.

    ``session`` is the stored session record (pixel size, memory, dpa per fluence). A track
    "ended" if it was last seen before the session's last frame; tracks still alive would bias
    lifetimes and free paths low.
    """
    nan = float("nan")
    if frames.empty:
        return {"frames": 0, "tracks": 0}
    pixel_size_nm = session["pixel_size_nm"]
    tracks = tracks_table(detections, frames, pixel_size_nm)
    rate_x, rate_y = drift_rate(frames)
    duration = float(frames.timestamp_s.iloc[-1] - frames.timestamp_s.iloc[0])
    seconds_per_frame = (
        duration / (frames.frame_index.iloc[-1] - frames.frame_index.iloc[0]) if duration else nan
    )
    ended = tracks[tracks.death_frame < frames.frame_index.iloc[-1]]
    grown = tracks.dropna(subset=["growth_rate_nm_s"])
    fluence = float(frames.fluence_ions_cm2.iloc[-1])
    turnover = loop_turnover(detections, frames, session)
    return {
        "frames": len(frames),
        "mean_loop_count": float(frames.loop_count.mean()),
        "mean_density_per_um2": float(frames.density_per_um2.mean()),
        "mean_major_nm": float(frames.mean_major_nm.mean()),
        "mean_minor_nm": float(frames.mean_minor_nm.mean()),
        "tracks": len(tracks),
        "duration_s": duration,
        "fluence_ions_cm2": fluence,
        "drift_rate_x_px_per_frame": rate_x,
        "drift_rate_y_px_per_frame": rate_y,
        "drift_rate_x_nm_per_s": rate_x * pixel_size_nm / seconds_per_frame,
        "drift_rate_y_nm_per_s": rate_y * pixel_size_nm / seconds_per_frame,
        "mean_lifetime_s": float(ended.lifetime_s.mean()) if len(ended) else nan,
        "mean_free_path_nm": float(ended.displacement_nm.mean()) if len(ended) else nan,
        "mean_growth_rate_nm_s": float(grown.growth_rate_nm_s.mean()) if len(grown) else nan,
        **turnover,
        "dose_dpa": fluence * session.get("dpa_per_ion_cm2", 0.0),
    }


# A track counts as a loop's birth or death only with this many detections: false detections and
# the fragments of a merged detection rarely last that long.
MIN_TRACK_DETECTIONS = 5
COALESCENCE_SIZE_JUMP = 1.15  # D after / D before (medians of 5): two touching equal loops give 1.41


def loop_turnover(detections: pd.DataFrame, frames: pd.DataFrame, session: dict) -> dict[str, float]:
    """Nucleation and loss rates (per um^2 per s, and nucleation per um^2 per ion/cm^2) and the
    number of coalescence events.

    A nucleation is a track born after the first frame away from the field's edges (loops drifting
    in are not born); a loss, one that ended (unseen for longer than the linker's memory) away from
    the edges. Both count tracks of >= ``MIN_TRACK_DETECTIONS`` detections only, over the interior
    area (the field less an edge band of the loops' mean diameter plus the search range). A
    coalescence is a loss whose last detection touches a loop that goes on (linked on, or a new
    track within the memory) at >= ``COALESCENCE_SIZE_JUMP`` times the larger of the two sizes
    before: two tracks ending where one larger loop continues. One continuing loop that swallows
    two ended tracks at once counts once.
    """
    nan = float("nan")
    out = {
        "nucleation_rate_per_um2_s": nan,
        "nucleation_per_um2_per_ion_cm2": nan,
        "loss_rate_per_um2_s": nan,
        "coalescence_events": 0,
    }
    if len(frames) < 2 or detections.empty:
        return out
    memory = int(session["memory_frames"])
    pixel_nm = session["pixel_size_nm"]
    first_frame, last_frame = int(frames.frame_index.iloc[0]), int(frames.frame_index.iloc[-1])
    width, height = float(frames.width_px.iloc[-1]), float(frames.height_px.iloc[-1])
    band = float(detections.major_px.mean()) + session["search_range_nm"] / pixel_nm
    interior_um2 = max(width - 2 * band, 0.0) * max(height - 2 * band, 0.0) * (pixel_nm * 1e-3) ** 2
    if interior_um2 <= 0:
        return out
    d = detections.sort_values(["track_id", "frame_index"], kind="stable")
    g = d.groupby("track_id")
    size = g.size()
    first, last = g.first(), g.last()

    def inside(points: pd.DataFrame) -> pd.Series:
        x, y = points.x_px, points.y_px
        return (x > band) & (x < width - band) & (y > band) & (y < height - band)

    real = size >= MIN_TRACK_DETECTIONS
    born = real & (first.frame_index > first_frame + memory) & inside(first)
    lost = real & (last.frame_index < last_frame - memory) & inside(last)
    duration = float(frames.timestamp_s.iloc[-1] - frames.timestamp_s.iloc[0])
    fluence = float(frames.fluence_ions_cm2.iloc[-1] - frames.fluence_ions_cm2.iloc[0])
    if duration > 0:
        out["nucleation_rate_per_um2_s"] = int(born.sum()) / interior_um2 / duration
        out["loss_rate_per_um2_s"] = int(lost.sum()) / interior_um2 / duration
    if fluence > 0:
        out["nucleation_per_um2_per_ion_cm2"] = int(born.sum()) / interior_um2 / fluence
    out["coalescence_events"] = _coalescences(d, last[lost], memory)
    return out


def _coalescences(d: pd.DataFrame, ended: pd.DataFrame, memory: int) -> int:
    """Coalescence events of ``loop_turnover``: ``d`` is sorted by track then frame."""
    by_frame = d.set_index("frame_index", drop=False).sort_index()
    tracks = dict(tuple(d.groupby("track_id")))
    absorbers: set[tuple[int, int]] = set()
    for track_id, end in ended.iterrows():
        k = int(end.frame_index)
        mine = tracks[track_id]
        d_end = float(mine.major_px.iloc[-5:].median())
        near = by_frame.loc[k + 1 : k + memory + 1]
        near = near[near.track_id != track_id]
        dx, dy = near.x_corrected_px - end.x_corrected_px, near.y_corrected_px - end.y_corrected_px
        near = near[np.hypot(dx, dy) <= 0.6 * (d_end + near.major_px)]
        for other in near.track_id.unique().tolist():
            theirs = tracks[other]
            before = theirs[theirs.frame_index <= k].major_px.iloc[-5:]
            after = theirs[theirs.frame_index > k].major_px.iloc[:5]
            reference = max(d_end, float(before.median())) if len(before) else d_end
            if len(after) >= 3 and float(after.median()) >= COALESCENCE_SIZE_JUMP * reference:
                newborn = int(theirs.frame_index.iloc[0]) > k  # counts once, however many it took in
                absorbers.add((int(other), -1 if newborn else k))
                break
    return len(absorbers)


def size_histogram(detections: pd.DataFrame, pixel_size_nm: float, bins: int = 30) -> pd.DataFrame:
    """Counts of major and minor axes (nm) over all detections, on shared bin edges."""
    major = detections.major_px.to_numpy() * pixel_size_nm
    minor = detections.minor_px.to_numpy() * pixel_size_nm
    top = float(max(major.max(initial=0.0), 1.0))
    edges = np.linspace(0.0, top, bins + 1)
    return pd.DataFrame(
        {
            "lower_nm": edges[:-1],
            "upper_nm": edges[1:],
            "major_count": np.histogram(major, edges)[0],
            "minor_count": np.histogram(minor, edges)[0],
        }
    )


def lifetime_histogram(tracks: pd.DataFrame, bins: int = 30) -> pd.DataFrame:
    """Counts of track lifetimes (s) of tracks that ended before the last frame (complete lives)."""
    ended = tracks[tracks.death_frame < tracks.death_frame.max()] if len(tracks) else tracks
    lifetimes = ended.lifetime_s.to_numpy(float)
    edges = np.linspace(0.0, float(max(lifetimes.max(initial=0.0), 1.0)), bins + 1)
    return pd.DataFrame(
        {"lower_s": edges[:-1], "upper_s": edges[1:], "tracks": np.histogram(lifetimes, edges)[0]}
    )


ARM_STATISTICS = [
    "arm_version",
    "sessions",
    "frames",
    "loops_per_frame",
    "mean_major_nm",
    "latency_p50_s",
    "shadow_f1",
    "shadow_frames",
]


def arm_statistics(rows: pd.DataFrame) -> pd.DataFrame:
    """Per-arm numbers of an A/B trial from ``Store.arm_frames`` rows, one row per arm (ARM_STATISTICS).

    Means are over loops and medians over frames, so a long session weighs by its frames; the
    shadow F1 is pooled over shadowed frames (2 sum matched / sum of both loop counts), which a
    few empty frames cannot swing the way a mean of per-frame F1s would.

    >>> rows = pd.DataFrame({"sid": [1, 1, 2], "arm": ["1", "1", "2"], "frame_index": [0, 1, 0],
    ...     "loop_count": [2, 4, 3], "mean_major_nm": [10.0, 13.0, 9.0], "latency_s": [0.1, 0.3, 0.2],
    ...     "shadow_matched": [2, None, None], "shadow_candidate_loop_count": [3, None, None]})
    >>> arm_statistics(rows).loc[0, ["frames", "loops_per_frame", "mean_major_nm", "shadow_f1"]].tolist()
    [2.0, 3.0, 12.0, 0.8]
    """
    out = []
    for arm, group in rows.groupby("arm", sort=True):
        frames = group.dropna(subset=["frame_index"])
        loops = frames.loop_count.to_numpy(float)
        with_loops = loops > 0
        shadowed = frames.dropna(subset=["shadow_matched"])
        pooled = shadowed.loop_count.sum() + shadowed.shadow_candidate_loop_count.sum()
        out.append(
            {
                "arm_version": str(arm),
                "sessions": group.sid.nunique(),
                "frames": len(frames),
                "loops_per_frame": float(loops.mean()) if len(frames) else float("nan"),
                "mean_major_nm": (
                    float(np.average(frames.mean_major_nm[with_loops], weights=loops[with_loops]))
                    if with_loops.any()
                    else float("nan")
                ),
                "latency_p50_s": float(frames.latency_s.median()),  # NaN when none was measured
                "shadow_f1": (
                    (2 * shadowed.shadow_matched.sum() / pooled if pooled else 1.0)
                    if len(shadowed)
                    else float("nan")
                ),
                "shadow_frames": len(shadowed),
            }
        )
    return pd.DataFrame(out, columns=ARM_STATISTICS)
