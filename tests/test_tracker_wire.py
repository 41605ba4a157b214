"""A frame's loops on the wire in both forms: the loop table this version's client sends, and the
Loop messages of older clients. A real tracker reads either into the same stored rows."""

from __future__ import annotations

import urllib.request

import numpy as np
import pandas as pd
import pytest

from loopstream.core.simulator import SimulatedMicroscope, SimulationConfig
from loopstream.dev import synthetic
from loopstream.tracker.client import TrackerClient, frame_message
from loopstream.tracker.server import ServerConfig, serve
from loopstream.v1 import tracker_pb2 as pb

CONFIG = SimulationConfig(shape=(256, 256), n_frames=12, initial_loops=150, max_major_px=20.0)
MIC = SimulatedMicroscope(CONFIG, seed=5)
SPEC = pb.SessionSpec(microscope_id="wire-1", pixel_size_nm=CONFIG.pixel_size_nm, frame_rate_hz=10.0)


@pytest.fixture
def tracker(tmp_path):
    running = serve(ServerConfig(db=tmp_path / "tracker.db", port=0, metrics_port=0))
    yield running
    running.stop(0.5)


@pytest.fixture
def client(tracker):
    c = TrackerClient(f"127.0.0.1:{tracker.port}")
    yield c
    c.close()


def message(session_id: str, index: int, loop_table: bool) -> pb.FrameDetections:
    loops = synthetic.detections(MIC, index)
    return frame_message(session_id, index, index / 10.0, loops, 256, 256, "m", "1", loop_table=loop_table)


def metric(tracker, line_start: str) -> float:
    url = f"http://127.0.0.1:{tracker.metrics_port}/metrics"
    text = urllib.request.urlopen(url, timeout=5).read().decode()
    (value,) = [line.split()[-1] for line in text.splitlines() if line.startswith(line_start)]
    return float(value)


def test_the_tracker_tells_clients_it_reads_loop_tables(client):
    session = client.OpenSession(SPEC)
    assert session.reads_loop_table
    assert client.GetSession(pb.SessionRef(session_id=session.session_id)).reads_loop_table


def test_a_loop_table_stores_what_the_same_loop_messages_store(tracker, client):
    table_sid, messages_sid = (client.OpenSession(SPEC).session_id for _ in range(2))
    tables = [message(table_sid, i, loop_table=True) for i in range(CONFIG.n_frames)]
    assert all(not m.loops and len(m.loop_table) % 44 == 0 for m in tables)
    assert all(a.accepted for a in client.stream(tables))
    assert all(a.accepted for a in client.stream(message(messages_sid, i, False) for i in range(12)))

    store = tracker.engine.store
    by_table, by_messages = store.detections(table_sid), store.detections(messages_sid)
    assert len(by_table) > 12 * 25
    pd.testing.assert_frame_equal(by_table, by_messages)
    frames = [store.frames(s).drop(columns="received_unix_s") for s in (table_sid, messages_sid)]
    pd.testing.assert_frame_equal(*frames)

    # The same frame in the other form is the same content: a duplicate, not a conflict.
    resent = list(client.stream(message(messages_sid, i, True) for i in range(12)))
    assert [(a.accepted, a.duplicate, a.error) for a in resent] == [(True, True, "")] * 12
    sent_loops = 2 * sum(len(synthetic.detections(MIC, i)) for i in range(12))
    assert metric(tracker, 'loopstream_tracker_detections_total{arm="",microscope="wire-1"}') == sent_loops

    # Track points come out in nm, from the stored px and the session's pixel size.
    tracks = client.GetTracks(pb.TracksRequest(session_id=table_sid, min_length=3)).tracks
    assert len(tracks) > 10
    stored = by_table.set_index(["track_id", "frame_index"])
    for t in tracks:
        majors = stored.loc[[(t.track_id, p.frame_index) for p in t.points], "major_px"].to_numpy()
        got = np.array([p.major_nm for p in t.points])
        np.testing.assert_allclose(got, majors * CONFIG.pixel_size_nm, rtol=1e-6)  # float on the wire


def test_loops_that_cannot_be_read_fail_their_frame_alone(tracker, client):
    sid = client.OpenSession(SPEC).session_id
    torn = message(sid, 0, loop_table=True)
    torn.loop_table = torn.loop_table[:-4]
    both = message(sid, 0, loop_table=True)
    both.loops.add(score=0.5)
    acks = list(client.stream([torn, both, message(sid, 0, loop_table=True)]))
    assert not acks[0].accepted and "not a whole number of loops" in acks[0].error, acks[0].error
    assert not acks[1].accepted and "both loop_table and 1 Loop messages" in acks[1].error, acks[1].error
    assert all("resend frame 0" in a.error for a in acks[:2])
    assert acks[2].accepted and not acks[2].duplicate
    assert metric(tracker, 'loopstream_tracker_frames_rejected_total{reason="invalid"}') == 2
