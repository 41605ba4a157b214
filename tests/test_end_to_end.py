"""Frames from a simulated microscope through a real Triton into a real tracker."""

from __future__ import annotations

import sqlite3

import grpc
import numpy as np
import pytest

from loopstream.client.session import Endpoints, MicroscopeSession
from loopstream.client.sources import Frame, SimulatorSource
from loopstream.client.tracker_link import DetectionStream, auth_metadata
from loopstream.core.simulator import SimulationConfig
from loopstream.dev.stack import LocalStack
from loopstream.v1 import tracker_pb2 as pb
from loopstream.v1 import tracker_pb2_grpc as pb_grpc


def _spec(config: SimulationConfig, microscope: str) -> pb.SessionSpec:
    return pb.SessionSpec(
        microscope_id=microscope,
        pixel_size_nm=config.pixel_size_nm,
        frame_rate_hz=config.frame_rate_hz,
        dose_rate_ions_cm2_s=config.dose_rate_ions_cm2_s,
    )


def _endpoints(stack: LocalStack) -> Endpoints:
    return Endpoints(stack.triton_url, stack.tracker_url, stack.token, reconnect_timeout_s=30)


def test_simulated_run_stores_every_frame_with_loop_counts_near_truth(stack: LocalStack) -> None:
    config = SimulationConfig(shape=(512, 512), n_frames=100)
    source = SimulatorSource(config, seed=101)
    with MicroscopeSession(_endpoints(stack), _spec(config, "e2e")) as session:
        for frame in source:
            session.submit(frame)
    report = session.report
    assert report.failed == []
    assert report.frames_stored == 100

    with grpc.insecure_channel(stack.tracker_url) as channel:
        stats = pb_grpc.TrackerStub(channel).GetStatistics(
            pb.StatisticsRequest(session_id=report.session_id), metadata=auth_metadata(stack.token)
        )
    assert [f.frame_index for f in stats.frames] == list(range(100))
    with sqlite3.connect(stack.workdir / "tracker.db") as db:
        rows = db.execute(
            "SELECT COUNT(*), COUNT(DISTINCT frame_index) FROM frames JOIN sessions USING (sid) "
            "WHERE session_id = ?",
            (report.session_id,),
        ).fetchone()
    assert rows == (100, 100), "the store must hold exactly one entry per frame"

    found = np.array([f.loop_count for f in stats.frames], float)
    truth = np.array([len(source.microscope.truth(i)) for i in range(100)], float)
    relative_error = np.abs(found - truth) / truth
    assert relative_error.mean() <= 0.20, f"mean |N - N_true| / N_true = {relative_error.mean():.2f}"


def test_bad_frames_get_clear_errors_and_the_run_continues(stack: LocalStack) -> None:
    config = SimulationConfig(shape=(256, 256), n_frames=4)
    good = list(SimulatorSource(config, seed=5))
    frames = [
        good[0],
        Frame(1, 0.1, good[1].image.astype(np.float32), "float frame"),
        Frame(2, 0.2, np.stack([good[2].image] * 3), "colour frame"),
        good[3],
    ]
    with MicroscopeSession(_endpoints(stack), _spec(config, "bad-frames")) as session:
        for frame in frames:
            session.submit(frame)
    report = session.report
    assert report.frames_stored == 2
    assert len(report.failed) == 2
    dtype_error, shape_error = sorted(report.failed, key=lambda message: "float frame" not in message)
    assert "float32" in dtype_error and "uint8 or uint16" in dtype_error
    assert "colour frame" in shape_error and "unexpected shape" in shape_error


def test_detections_for_an_unknown_session_are_rejected_and_the_stream_continues(stack: LocalStack) -> None:
    with grpc.insecure_channel(stack.tracker_url) as channel:
        session = pb_grpc.TrackerStub(channel).OpenSession(
            _spec(SimulationConfig(), "unknown-session"), metadata=auth_metadata(stack.token)
        )
    acks: list[pb.Ack] = []
    stream = DetectionStream(stack.tracker_url, stack.token, on_ack=acks.append)
    stream.send(pb.FrameDetections(session_id="no-such-session", frame_index=0, width_px=512, height_px=512))
    stream.send(pb.FrameDetections(session_id=session.session_id, frame_index=0, width_px=512, height_px=512))
    stream.close()
    unknown, known = acks
    assert not unknown.accepted and "no-such-session" in unknown.error
    assert known.accepted


def test_a_session_naming_a_pipeline_runs_on_it_and_an_unserved_name_is_a_clear_error(
    stack: LocalStack,
) -> None:
    config = SimulationConfig(shape=(256, 256), n_frames=3)
    spec = _spec(config, "named-pipeline")
    spec.model_family = pb.MODEL_FAMILY_SEMANTIC
    spec.model_name = "loops_instance_ti"  # a material's own pipeline: the name wins over the family
    with MicroscopeSession(_endpoints(stack), spec) as session:
        for frame in SimulatorSource(config, seed=9):
            session.submit(frame)
    assert session.report.frames_stored == 3 and session.report.model.startswith("loops_instance_ti:")
    with sqlite3.connect(stack.workdir / "tracker.db") as db:
        stored = db.execute(
            "SELECT DISTINCT frames.model_name FROM frames JOIN sessions USING (sid) WHERE session_id = ?",
            (session.report.session_id,),
        ).fetchall()
    assert stored == [("loops_instance_ti",)]

    spec.model_name = "loops_unserved"
    quick = Endpoints(stack.triton_url, stack.tracker_url, stack.token, reconnect_timeout_s=1)
    with pytest.raises(ConnectionError, match="no ready version of loops_unserved"):
        MicroscopeSession(quick, spec)
