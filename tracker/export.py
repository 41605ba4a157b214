"""A session as files: CSV (and Parquet when pyarrow is installed) tables and PNG plots.

Plots use matplotlib's Agg backend through an explicit Figure, so exporting is thread safe and
never needs a display.
"""

from __future__ import annotations

import functools
import io
import json
import math
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from loopstream.tracker import fragments, statistics
from loopstream.tracker.engine import TrackerEngine

try:  # Parquet is optional: pandas needs pyarrow for it
    import pyarrow
    import pyarrow.parquet

    HAVE_PARQUET = True
except ImportError:
    HAVE_PARQUET = False


CHUNK_BYTES = 1 << 20  # data per ExportChunk message, far under gRPC's default 4 MiB limit
DETECTIONS_PER_READ = 50_000  # detections read from the store (and converted) at a time


@dataclass(frozen=True)
class ExportChunk:
    """A piece of one exported file; ``last`` marks the file's final piece."""

    name: str
    media_type: str
    data: bytes
    last: bool


def export_session(
    engine: TrackerEngine, session_id: str, join_fragments: bool = False
) -> Iterator[ExportChunk]:
    """Tables (detections, tracks, per-frame statistics, size and lifetime histograms, summary) and
    plots, as pieces of at most ``CHUNK_BYTES``.

    The detections, the one table as large as the session, are read from the store
    ``DETECTIONS_PER_READ`` at a time and written as they are read: CSV straight to the stream,
    Parquet one row group per read through a temporary file. With ``join_fragments`` the tracks,
    their lifetimes and plot are those of ``fragments.fragment_joins`` (each detection also gets
    its ``joined_track_id``; ``session.json`` says how many joins); the store is not changed.
    """
    session = engine.session(session_id)  # NOT_FOUND before the first piece
    pixel_nm = session["pixel_size_nm"]
    frames, summary, _ = engine.statistics(session_id)
    detections = engine.store.detections(session_id)
    joined = fragments.fragment_joins(detections, frames) if join_fragments else None
    yield from _pieces("detections.csv", "text/csv", _detections_csv(engine, session_id, frames, joined))
    if HAVE_PARQUET:
        with tempfile.TemporaryFile() as spool:
            _detections_parquet(engine, session_id, frames, joined, spool)
            spool.seek(0)
            yield from _pieces(
                "detections.parquet", PARQUET, iter(functools.partial(spool.read, CHUNK_BYTES), b"")
            )
    if joined is None:
        tracks = engine.tracks(session_id)
    else:
        detections = detections.assign(track_id=detections.track_id.map(joined))
        tracks = statistics.tracks_table(detections, frames, pixel_nm)
    sizes = statistics.size_histogram(detections, pixel_nm)
    lifetimes = statistics.lifetime_histogram(tracks)
    tables = {
        "tracks": tracks,
        "frame_statistics": frames,
        "size_histogram": sizes,
        "lifetime_histogram": lifetimes,
    }
    for name, table in tables.items():
        yield from _pieces(f"{name}.csv", "text/csv", [table.to_csv(index=False).encode()])
        if HAVE_PARQUET:
            yield from _pieces(f"{name}.parquet", PARQUET, [table.to_parquet(index=False)])
    # Strict JSON has no NaN: undefined numbers (e.g. no track has ended yet) become null.
    summary = {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in summary.items()}
    meta = {**session, "summary": summary}
    if joined is not None:
        meta["fragment_joins"] = int((joined.index != joined.to_numpy()).sum())
    yield from _pieces("session.json", "application/json", [json.dumps(meta, indent=2, default=str).encode()])
    plots = {
        "density_size_vs_time.png": lambda: plot_series(frames, "timestamp_s", "time (s)"),
        "density_size_vs_fluence.png": lambda: plot_series(frames, "fluence_ions_cm2", "fluence (ions/cm²)"),
        "size_histogram.png": lambda: plot_size_histogram(sizes),
        "lifetime_histogram.png": lambda: plot_lifetime_histogram(lifetimes),
        "tracks.png": lambda: plot_tracks(detections, frames),
    }
    if session["dpa_per_ion_cm2"] > 0:  # the dpa axis exists only when the session gave the factor
        plots["density_size_vs_dpa.png"] = lambda: plot_series(frames, "dose_dpa", "dose (dpa)")
    for name, plot in plots.items():
        yield from _pieces(name, "image/png", [plot()])


PARQUET = "application/vnd.apache.parquet"


def _pieces(name: str, media_type: str, blocks: Iterable[bytes]) -> Iterator[ExportChunk]:
    """``blocks`` as chunks of at most ``CHUNK_BYTES``, the last one marked (an empty file: one)."""
    pending = b""
    for block in blocks:
        pending += block
        while len(pending) > CHUNK_BYTES:
            yield ExportChunk(name, media_type, pending[:CHUNK_BYTES], False)
            pending = pending[CHUNK_BYTES:]
    yield ExportChunk(name, media_type, pending, True)


def _frame_batches(frames: pd.DataFrame) -> Iterator[tuple[int, int]]:
    """(first, last) frame indices of consecutive frames holding about ``DETECTIONS_PER_READ`` loops."""
    if frames.empty:
        return
    index, loops = frames.frame_index.to_numpy(), frames.loop_count.to_numpy()
    batch = np.cumsum(loops) // DETECTIONS_PER_READ
    for b in np.unique(batch):
        chosen = index[batch == b]
        yield int(chosen[0]), int(chosen[-1])


def _detection_reads(
    engine: TrackerEngine, session_id: str, frames: pd.DataFrame, joined: pd.Series | None
) -> Iterator[pd.DataFrame]:
    """The stored detections, a batch of frames at a time, with their ``joined_track_id`` if joined."""
    for first, last in _frame_batches(frames):
        part = engine.store.detections(session_id, first, last)
        yield part if joined is None else part.assign(joined_track_id=part.track_id.map(joined))


def _detections_csv(
    engine: TrackerEngine, session_id: str, frames: pd.DataFrame, joined: pd.Series | None
) -> Iterator[bytes]:
    header = True
    for part in _detection_reads(engine, session_id, frames, joined):
        yield part.to_csv(index=False, header=header).encode()
        header = False
    if header:  # no frame: the header alone
        yield engine.store.detections(session_id).to_csv(index=False).encode()


def _detections_parquet(
    engine: TrackerEngine, session_id: str, frames: pd.DataFrame, joined: pd.Series | None, sink
) -> None:
    writer = None
    for part in _detection_reads(engine, session_id, frames, joined):
        table = pyarrow.Table.from_pandas(part, preserve_index=False)
        writer = writer or pyarrow.parquet.ParquetWriter(sink, table.schema)
        writer.write_table(table)
    if writer is None:
        engine.store.detections(session_id).to_parquet(sink, index=False)
    else:
        writer.close()


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
