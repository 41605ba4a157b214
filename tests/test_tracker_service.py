"""The tracker's gRPC API on a real in-process server (127.0.0.1, ephemeral port, SQLite in tmp_path)."""

from __future__ import annotations

import io
import json
import math
import shutil
import threading
import urllib.request
import uuid

import grpc
import numpy as np
import pandas as pd
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from loopstream.core.simulator import SimulatedMicroscope, SimulationConfig
from loopstream.dev import synthetic
from loopstream.tracker.client import TrackerClient, frame_message
from loopstream.tracker.engine import Defaults
from loopstream.tracker.server import ServerConfig, serve
from loopstream.v1 import tracker_pb2 as pb
from tests.conftest import TRACKER_TOKEN, open_session, self_signed_certificate, serve_tracker

CONFIG = SimulationConfig(
    shape=(256, 256),
    n_frames=40,
    initial_loops=150,
    initial_major_px=(6.0, 14.0),
    max_major_px=20.0,
    drift_px_per_frame=(0.3, -0.2),
)
MIC = SimulatedMicroscope(CONFIG, seed=11)


@pytest.fixture
def tracker(tmp_path):
    running = serve_tracker(
        tmp_path / "tracker.db", defaults=Defaults(model_name="loops_unet", model_version="3")
    )
    yield running
    running.stop(0.5)


def message(session_id: str, index: int, mic: SimulatedMicroscope = MIC) -> pb.FrameDetections:
    loops = synthetic.detections(mic, index, synthetic.CLEAN)  # plumbing: a near-perfect detector
    h, w = mic.config.shape
    return frame_message(session_id, index, index / mic.config.frame_rate_hz, loops, w, h, "loops_unet", "3")


def test_open_stream_statistics_and_idempotent_resend(client):
    session = client.OpenSession(
        pb.SessionSpec(pixel_size_nm=0.5, frame_rate_hz=10.0, dose_rate_ions_cm2_s=2e11)
    )
    assert uuid.UUID(session.session_id).version == 4
    assert (session.model_name, session.model_version, session.last_frame_index) == ("loops_unet", "3", -1)
    sid = session.session_id
    sent = [message(sid, i) for i in range(20)]
    acks = list(client.stream(sent))
    assert [(a.frame_index, a.accepted, a.duplicate, a.error) for a in acks] == [
        (i, True, False, "") for i in range(20)
    ]

    stats = client.GetStatistics(pb.StatisticsRequest(session_id=sid))
    assert [f.frame_index for f in stats.frames] == list(range(20))
    for msg, f in zip(sent, stats.frames, strict=True):
        major = np.array([lp.major_px for lp in msg.loops], dtype=np.float64)
        minor = np.array([lp.minor_px for lp in msg.loops], dtype=np.float64)
        assert f.loop_count == len(msg.loops) > 20
        assert f.density_per_um2 == pytest.approx(len(msg.loops) / (256 * 0.5e-3) ** 2)
        assert f.mean_major_nm == pytest.approx(major.mean() * 0.5)
        assert f.mean_minor_nm == pytest.approx(minor.mean() * 0.5)
        assert f.foreground_percent == pytest.approx(100 * np.sum(np.pi / 4 * major * minor) / 256**2)
        assert f.fluence_ions_cm2 == pytest.approx(2e11 * msg.timestamp_s)
        assert f.drift_x_nm == pytest.approx(f.drift_x_px * 0.5)
    assert stats.summary.frames == 20 and stats.summary.tracks > 20
    assert stats.frames[-1].linked_count > 0.9 * stats.frames[-1].loop_count

    # A client that lost its acks resends: nothing is stored twice, nothing changes.
    again = list(client.stream(sent[10:]))
    assert [(a.frame_index, a.accepted, a.duplicate) for a in again] == [
        (i, True, True) for i in range(10, 20)
    ]
    assert client.GetSession(pb.SessionRef(session_id=sid)).frames_stored == 20
    assert client.GetStatistics(pb.StatisticsRequest(session_id=sid)) == stats
    window = client.GetStatistics(pb.StatisticsRequest(session_id=sid, from_frame=5, to_frame=7))
    assert window.frames == stats.frames[5:8] and window.summary == stats.summary
    assert window.window.frames == 3 and window.window.duration_s == pytest.approx(0.2)
    assert window.window.mean_loop_count == pytest.approx(np.mean([f.loop_count for f in stats.frames[5:8]]))


def test_bad_input_is_rejected_clearly_and_the_stream_goes_on(client):
    sid = open_session(client, CONFIG, "jannus-1")
    nan_size = message(sid, 2)
    nan_size.loops[3].major_px = math.nan
    negative = message(sid, 2)
    negative.loops[0].minor_px = -4.0
    no_size = message(sid, 2)
    no_size.width_px = 0
    empty = pb.FrameDetections(session_id=sid, frame_index=6, timestamp_s=0.6, width_px=256, height_px=256)
    stream = [
        message(sid, 0),
        message("no-such-session", 1),
        nan_size,
        negative,
        no_size,
        message(sid, 5),
        message(sid, 3),  # backwards after 5
        empty,
        message(sid, 7),
    ]
    acks = list(client.stream(stream))
    assert [a.accepted for a in acks] == [True, False, False, False, False, True, False, True, True]
    assert not any(a.duplicate for a in acks)
    assert "unknown session_id 'no-such-session'" in acks[1].error and "OpenSession" in acks[1].error
    assert "loop 3 has major_px = nan" in acks[2].error and "resend frame 2" in acks[2].error
    assert "loop 0 has minor_px = -4.0" in acks[3].error
    assert "width_px and height_px" in acks[4].error
    assert "frame_index 3 goes backwards" in acks[6].error and "stored up to frame 5" in acks[6].error
    session = client.GetSession(pb.SessionRef(session_id=sid))
    assert (session.frames_stored, session.last_frame_index) == (4, 7)
    frames = client.GetStatistics(pb.StatisticsRequest(session_id=sid)).frames
    assert [f.frame_index for f in frames] == [0, 5, 6, 7]
    assert (
        frames[2].loop_count == 0 and math.isnan(frames[2].mean_major_nm) and frames[2].density_per_um2 == 0
    )
    assert frames[3].linked_count > 0  # memory carried tracks over the empty frame

    with pytest.raises(grpc.RpcError) as e:
        client.GetStatistics(pb.StatisticsRequest(session_id="nope"))
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as e:
        client.OpenSession(pb.SessionSpec(pixel_size_nm=-1, frame_rate_hz=10))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "pixel_size_nm" in e.value.details()

    client.CloseSession(pb.SessionRef(session_id=sid))
    (ack,) = client.stream([message(sid, 8)])
    assert not ack.accepted and "is closed" in ack.error
    assert [s.session_id for s in client.ListSessions(pb.ListSessionsRequest()).sessions] == []
    assert [s.closed for s in client.ListSessions(pb.ListSessionsRequest(include_closed=True)).sessions] == [
        True
    ]


def test_every_call_needs_the_token_but_health_does_not(tracker, client):
    target = f"127.0.0.1:{tracker.port}"
    for token in (None, "wrong"):
        other = TrackerClient(target, token)
        with pytest.raises(grpc.RpcError) as e:
            other.ListSessions(pb.ListSessionsRequest())
        assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert ("missing" if token is None else "wrong") in e.value.details()
        with pytest.raises(grpc.RpcError) as e:
            list(other.stream([message("x", 0)]))
        assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
        other.close()
    assert client.ListSessions(pb.ListSessionsRequest()).sessions == []

    with grpc.insecure_channel(target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "loopstream.v1.Tracker"):
            reply = health.Check(health_pb2.HealthCheckRequest(service=service))
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        reflect = reflection_pb2_grpc.ServerReflectionStub(channel)
        query = reflection_pb2.ServerReflectionRequest(list_services="")
        with pytest.raises(grpc.RpcError):
            list(reflect.ServerReflectionInfo(iter([query])))
        replies = list(reflect.ServerReflectionInfo(iter([query]), metadata=client.metadata))
    names = {s.name for s in replies[0].list_services_response.service}
    assert {"loopstream.v1.Tracker", "grpc.health.v1.Health"} <= names


def test_tracks_export_watch_and_metrics(tracker, client, tmp_path):
    sid = open_session(client, CONFIG, "jannus-1")
    received: list[pb.FrameStatistics] = []
    watch = client.WatchStatistics(pb.WatchRequest(session_id=sid))
    watcher = threading.Thread(target=lambda: received.extend(watch))
    watcher.start()
    assert all(a.accepted for a in client.stream(message(sid, i) for i in range(15)))

    tracks = client.GetTracks(pb.TracksRequest(session_id=sid, min_length=15)).tracks
    assert len(tracks) > 20
    for t in tracks:
        assert (t.birth_frame, t.death_frame, t.length, len(t.points)) == (0, 14, 15, 15)
        assert t.lifetime_s == pytest.approx(1.4)
        assert t.displacement_nm < 1.0  # loops sit still in the sample; the stage drifts
        assert [p.frame_index for p in t.points] == list(range(15))
    assert len({t.track_id for t in tracks}) == len(tracks)

    files = {p.name: p.read_bytes() for p in client.export(sid, tmp_path / "export")}
    assert {
        "detections.csv",
        "tracks.csv",
        "frame_statistics.csv",
        "size_histogram.csv",
        "session.json",
    } <= set(files)
    detections = pd.read_csv(io.BytesIO(files["detections.csv"]))
    assert len(detections) == sum(
        f.loop_count for f in client.GetStatistics(pb.StatisticsRequest(session_id=sid)).frames
    )
    assert {"track_id", "x_corrected_px", "frame_index", "major_px"} <= set(detections.columns)
    frame_statistics = pd.read_csv(io.BytesIO(files["frame_statistics.csv"]))
    assert len(frame_statistics) == 15
    assert (frame_statistics.drift_sigma_x_nm.iloc[1:] > 0).all()  # the drift with its uncertainty
    assert (frame_statistics.drift_matched_count.iloc[1:] > 0).all()
    meta = json.loads(files["session.json"], parse_constant=lambda c: pytest.fail(f"{c} is not JSON"))
    assert meta["session_id"] == sid and meta["summary"]["frames"] == 15
    for table in ("detections", "tracks", "frame_statistics", "size_histogram", "lifetime_histogram"):
        parquet = pd.read_parquet(io.BytesIO(files[f"{table}.parquet"]))
        assert parquet.to_csv(index=False).encode() == files[f"{table}.csv"]
    pngs = [
        "density_size_vs_time",
        "density_size_vs_fluence",
        "size_histogram",
        "lifetime_histogram",
        "tracks",
    ]
    for name in (f"{p}.png" for p in pngs):
        assert files[name].startswith(b"\x89PNG")
    assert "fragment_joins" not in meta and "joined_track_id" not in detections
    joined = {p.name: p.read_bytes() for p in client.export(sid, tmp_path / "joined", join_fragments=True)}
    assert json.loads(joined["session.json"])["fragment_joins"] == 0  # no track broke in 15 frames
    assert (pd.read_csv(io.BytesIO(joined["detections.csv"])).joined_track_id == detections.track_id).all()

    client.CloseSession(pb.SessionRef(session_id=sid))
    watcher.join(10)
    assert not watcher.is_alive(), "the watch did not end when its session closed"
    assert [f.frame_index for f in received] == list(range(15))

    text = (
        urllib.request.urlopen(f"http://127.0.0.1:{tracker.metrics_port}/metrics", timeout=5).read().decode()
    )
    assert 'loopstream_tracker_frames_total{arm="3",microscope="jannus-1",outcome="accepted"} 15.0' in text
    loops = sum(len(message(sid, i).loops) for i in range(15))
    assert f'loopstream_tracker_detections_total{{arm="3",microscope="jannus-1"}} {loops:.1f}' in text
    assert "loopstream_tracker_open_sessions 0.0" in text
    assert "loopstream_tracker_store_commit_seconds_count 15.0" in text
    assert "loopstream_tracker_frames_per_second 1.5" in text


def test_sessions_get_their_model_from_the_ab_policy(tmp_path):
    policy = tmp_path / "ab-policy.json"
    policy.write_text('{"pipeline": "loops_semantic", "arms": {"4": 0.5, "5": 0.5}}')
    running = serve(ServerConfig(db=tmp_path / "t.db", port=0, metrics_port=-1, ab_policy=str(policy)))
    client = TrackerClient(f"127.0.0.1:{running.port}")
    try:
        spec = pb.SessionSpec(pixel_size_nm=0.5, frame_rate_hz=10.0)
        sessions = [client.OpenSession(spec) for _ in range(20)]
        assert {s.model_name for s in sessions} == {"loops_semantic"}
        assert {s.model_version for s in sessions} == {"4", "5"}
        for s in sessions:
            assert client.GetSession(pb.SessionRef(session_id=s.session_id)).model_version == s.model_version
        policy.write_text('{"pipeline": "loops_semantic", "arms": {"6": 1.0}}')  # promote, no restart
        assert client.OpenSession(spec).model_version == "6"
        assert client.GetSession(pb.SessionRef(session_id=sessions[0].session_id)).model_version in {"4", "5"}
        ti = pb.SessionSpec(pixel_size_nm=0.5, frame_rate_hz=10.0, model_name="loops_ti")
        other = client.OpenSession(ti)
        assert (other.model_name, other.model_version) == ("loops_ti", ""), "not the policy's pipeline"
        policy.write_text('{"pipeline": "loops_ti", "arms": {"2": 1.0}}')
        named = client.OpenSession(ti)
        assert (named.model_name, named.model_version) == ("loops_ti", "2"), "the policy's pipeline, named"
    finally:
        client.close()
        running.stop(0.5)


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is needed to make a test certificate")
def test_tls_with_token(tmp_path):
    key, cert = self_signed_certificate(tmp_path)
    running = serve_tracker(tmp_path / "t.db", metrics_port=-1, tls_cert=str(cert), tls_key=str(key))
    try:
        credentials = grpc.ssl_channel_credentials(root_certificates=cert.read_bytes())
        client = TrackerClient(f"127.0.0.1:{running.port}", TRACKER_TOKEN, credentials)
        assert client.ListSessions(pb.ListSessionsRequest()).sessions == []
        client.close()
        plain = TrackerClient(f"127.0.0.1:{running.port}", TRACKER_TOKEN)
        with pytest.raises(grpc.RpcError) as e:
            plain.ListSessions(pb.ListSessionsRequest(), timeout=5)
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE
        plain.close()
    finally:
        running.stop(0.5)
