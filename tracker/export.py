"""A session as files: CSV (and Parquet when pyarrow is installed) tables and PNG plots.

Plots use matplotlib's Agg backend through an explicit Figure, so exporting is thread safe and
never needs a display.
"""

from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from loopstream.tracker import statistics
from loopstream.tracker.engine import TrackerEngine

try:  # Parquet is optional: pandas needs pyarrow for it
    import pyarrow  # noqa: F401

    HAVE_PARQUET = True
except ImportError:
    HAVE_PARQUET = False


@dataclass(frozen=True)
class ExportedFile:
    name: str
    media_type: str
    content: bytes


def export_session(engine: TrackerEngine, session_id: str) -> list[ExportedFile]:
    """Tables (detections, tracks, per-frame statistics, size histogram, summary) and plots."""
    session = engine.session(session_id)
    pixel_nm = session["pixel_size_nm"]
    frames, summary, _ = engine.statistics(session_id)
    detections = engine.store.detections(session_id)
    tracks = engine.tracks(session_id)
    sizes = statistics.size_histogram(detections, pixel_nm)
    lifetimes = statistics.lifetime_histogram(tracks)
    tables = {
        "detections": detections,
        "tracks": tracks,
        "frame_statistics": frames,
        "size_histogram": sizes,
        "lifetime_histogram": lifetimes,
    }
    files = [
        ExportedFile(f"{name}.csv", "text/csv", table.to_csv(index=False).encode())
        for name, table in tables.items()
    ]
    if HAVE_PARQUET:
        files += [
            ExportedFile(f"{name}.parquet", "application/vnd.apache.parquet", table.to_parquet(index=False))
            for name, table in tables.items()
        ]
    # Strict JSON has no NaN: undefined numbers (e.g. no track has ended yet) become null.
    summary = {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in summary.items()}
    meta = {**session, "summary": summary}
    files.append(
        ExportedFile("session.json", "application/json", json.dumps(meta, indent=2, default=str).encode())
    )
    files += [
        ExportedFile("density_size_vs_time.png", "image/png", plot_series(frames, "timestamp_s", "time (s)")),
        ExportedFile(
            "density_size_vs_fluence.png",
            "image/png",
            plot_series(frames, "fluence_ions_cm2", "fluence (ions/cm²)"),
        ),
        ExportedFile("size_histogram.png", "image/png", plot_size_histogram(sizes)),
        ExportedFile("lifetime_histogram.png", "image/png", plot_lifetime_histogram(lifetimes)),
        ExportedFile("tracks.png", "image/png", plot_tracks(detections, frames)),
    ]
    if session["dpa_per_ion_cm2"] > 0:  # the dpa axis exists only when the session gave the factor
        by_dose = plot_series(frames, "dose_dpa", "dose (dpa)")
        files.append(ExportedFile("density_size_vs_dpa.png", "image/png", by_dose))
    return files


def _png(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    FigureCanvasAgg(fig).print_png(buffer)
    return buffer.getvalue()


def plot_series(frames: pd.DataFrame, x: str, xlabel: str) -> bytes:
    """Areal density and mean D / Dm against ``x`` (time, fluence or dose in dpa)."""
    fig = Figure(figsize=(8, 6), dpi=100)
    top, bottom = fig.subplots(2, 1, sharex=True)
    top.plot(frames[x], frames.density_per_um2, color="tab:blue")
    top.set_ylabel("density (loops/µm²)")
    bottom.plot(frames[x], frames.mean_major_nm, label="mean D (major)")
    bottom.plot(frames[x], frames.mean_minor_nm, label="mean Dm (minor)")
    bottom.set_ylabel("size (nm)")
    bottom.set_xlabel(xlabel)
    bottom.legend(loc="best")
    fig.tight_layout()
    return _png(fig)


def plot_size_histogram(sizes: pd.DataFrame) -> bytes:
    fig = Figure(figsize=(6, 4), dpi=100)
    ax = fig.subplots()
    width = (sizes.upper_nm - sizes.lower_nm).to_numpy()
    ax.bar(sizes.lower_nm, sizes.major_count, width=width, align="edge", alpha=0.6, label="D (major)")
    ax.bar(sizes.lower_nm, sizes.minor_count, width=width, align="edge", alpha=0.6, label="Dm (minor)")
    ax.set_xlabel("size (nm)")
    ax.set_ylabel("detections")
    ax.legend(loc="best")
    fig.tight_layout()
    return _png(fig)


def plot_lifetime_histogram(lifetimes: pd.DataFrame) -> bytes:
    fig = Figure(figsize=(6, 4), dpi=100)
    ax = fig.subplots()
    width = (lifetimes.upper_s - lifetimes.lower_s).to_numpy()
    ax.bar(lifetimes.lower_s, lifetimes.tracks, width=width, align="edge")
    ax.set_xlabel("loop lifetime (s), tracks that ended")
    ax.set_ylabel("tracks")
    fig.tight_layout()
    return _png(fig)


def plot_tracks(detections: pd.DataFrame, frames: pd.DataFrame) -> bytes:
    """Trajectories over the last frame's field, in frame pixels (image convention: y down).

    The tracker never sees images, so the "frame" is the field outline with the last frame's
    loops marked.
    """
    fig = Figure(figsize=(6, 6), dpi=100)
    ax = fig.subplots()
    if not frames.empty:
        last = frames.iloc[-1]
        ax.set_xlim(0, last.width_px)
        ax.set_ylim(last.height_px, 0)
        for _, track in detections.groupby("track_id", sort=False):
            if len(track) > 1:
                ax.plot(track.x_px, track.y_px, linewidth=0.8)
        now = detections[detections.frame_index == last.frame_index]
        ax.scatter(now.x_px, now.y_px, s=np.clip(now.major_px, 4, 200), facecolors="none", edgecolors="k")
    ax.set_aspect("equal")
    ax.set_xlabel("x (px)")
    ax.set_ylabel("y (px)")
    fig.tight_layout()
    return _png(fig)
