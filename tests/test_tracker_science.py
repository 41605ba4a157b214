"""Tracking science against the simulator's ground truth, through the real gRPC API.

520 frames, ~70 loops per frame of 1024^2 px, stage drift (0.5, -0.3) px/frame, loop growth
0.08-0.2 px/frame, detector noise (0.2 px centres, 0.3 px sizes, 2 % misses, false positives).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from loopstream.core.simulator import SimulatedMicroscope, SimulationConfig
from loopstream.dev import synthetic
from loopstream.tracker.client import TrackerClient, frame_message
from loopstream.tracker.server import ServerConfig, serve
from loopstream.v1 import tracker_pb2 as pb

N_FRAMES = 520
CONFIG = SimulationConfig(
    shape=(1024, 1024),
    n_frames=N_FRAMES,
    initial_loops=20,
    drift_px_per_frame=(0.5, -0.3),
    growth_px_per_frame=(0.08, 0.2),
    max_major_px=160.0,
)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One session streamed through a tracker: (microscope, sent detections, statistics, tracks)."""
    mic = SimulatedMicroscope(CONFIG, seed=3)
    running = serve(ServerConfig(db=tmp_path_factory.mktemp("science") / "t.db", port=0, metrics_port=-1))
    client = TrackerClient(f"127.0.0.1:{running.port}")
    try:
        spec = pb.SessionSpec(
            pixel_size_nm=CONFIG.pixel_size_nm,
            frame_rate_hz=CONFIG.frame_rate_hz,
            dose_rate_ions_cm2_s=CONFIG.dose_rate_ions_cm2_s,
            search_range_nm=4.0,
        )
        sid = client.OpenSession(spec).session_id
        sent = [synthetic.detections(mic, i).assign(frame_index=i) for i in range(N_FRAMES)]
        messages = (
            frame_message(sid, i, i / CONFIG.frame_rate_hz, d, 1024, 1024) for i, d in enumerate(sent)
        )
        assert all(a.accepted for a in client.stream(messages))
        stats = client.GetStatistics(pb.StatisticsRequest(session_id=sid))
        tracks = client.GetTracks(pb.TracksRequest(session_id=sid)).tracks
    finally:
        client.close()
        running.stop(0.5)
    return mic, pd.concat(sent, ignore_index=True), stats, tracks


def test_enough_loops_per_frame(run):
    _, _, stats, _ = run
    counts = [f.loop_count for f in stats.frames]
    assert len(counts) == N_FRAMES and min(counts) >= 50


def test_drift_within_one_pixel_at_every_frame(run):
    mic, _, stats, _ = run
    truth = np.array([mic.stage_offset(f.frame_index) for f in stats.frames])
    estimate = np.array([(f.drift_x_px, f.drift_y_px) for f in stats.frames])
    error = np.hypot(*(estimate - truth).T)
    assert error.max() < 1.0, f"worst drift error {error.max():.3f} px at frame {error.argmax()}"
    assert stats.summary.drift_rate_x_px_per_frame == pytest.approx(0.5, abs=0.01)
    assert stats.summary.drift_rate_y_px_per_frame == pytest.approx(-0.3, abs=0.01)


def _points_with_truth(run) -> pd.DataFrame:
    """Every track point with the true loop id of the detection it came from (-1: false positive)."""
    _, sent, _, tracks = run
    key = sent.assign(x32=sent.x_px.astype(np.float32), y32=sent.y_px.astype(np.float32))
    rows = [
        (t.track_id, p.frame_index, np.float32(p.x_px), np.float32(p.y_px), p.major_nm)
        for t in tracks
        for p in t.points
    ]
    points = pd.DataFrame(rows, columns=["track_id", "frame_index", "x32", "y32", "major_nm"])
    merged = points.merge(
        key[["frame_index", "x32", "y32", "loop_id"]], on=["frame_index", "x32", "y32"], how="left"
    )
    assert len(merged) == len(points) == len(sent) and merged.loop_id.notna().all()
    return merged


def test_track_purity(run):
    points = _points_with_truth(run)
    linked = points[points.groupby("track_id").track_id.transform("size") >= 2]
    dominant = linked.groupby("track_id").loop_id.agg(lambda ids: ids.value_counts().iloc[0])
    purity = dominant.sum() / len(linked)
    assert purity >= 0.95, f"track purity {purity:.4f}"
    # Not fragmented either: most true loops live in one track.
    real = points[points.loop_id >= 0]
    tracks_per_loop = real.groupby("loop_id").track_id.nunique().mean()
    assert tracks_per_loop < 1.1, f"{tracks_per_loop:.3f} tracks per true loop"


def test_growth_rate_within_ten_percent_for_long_tracks(run):
    mic, _, _, tracks = run
    points = _points_with_truth(run)
    owner = points.groupby("track_id").loop_id.agg(lambda ids: ids.value_counts().index[0])
    nm_per_s = CONFIG.pixel_size_nm * CONFIG.frame_rate_hz
    long_tracks = [t for t in tracks if t.length > 50]
    assert len(long_tracks) >= 50
    errors = []
    for t in long_tracks:
        true_rate = mic.loops.growth[owner[t.track_id]] * nm_per_s
        errors.append((t.growth_rate_nm_s - true_rate) / true_rate)
    errors = np.abs(errors)
    assert errors.max() <= 0.10, (
        f"worst growth-rate error {100 * errors.max():.1f} % (median {100 * np.median(errors):.1f} %)"
    )
