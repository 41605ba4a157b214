"""No frame lost or doubled: several microscopes at once, and services that crash mid-run."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest

from loopstream.client.session import Endpoints, MicroscopeSession, SessionReport
from loopstream.client.sources import SimulatorSource
from loopstream.client.tracker_link import auth_metadata
from loopstream.core.simulator import SimulationConfig
from loopstream.dev.stack import LocalStack
from loopstream.v1 import tracker_pb2 as pb
from loopstream.v1 import tracker_pb2_grpc as pb_grpc

CONFIG = SimulationConfig(shape=(256, 256), n_frames=40)


def _stream(stack: LocalStack, seed: int, during: Callable[[MicroscopeSession, int], None] | None = None):
    spec = pb.SessionSpec(microscope_id=f"mic-{seed}", pixel_size_nm=CONFIG.pixel_size_nm, frame_rate_hz=10)
    endpoints = Endpoints(
        stack.triton_url, stack.tracker_url, stack.token, max_in_flight=4, reconnect_timeout_s=90
    )
    session = MicroscopeSession(endpoints, spec)
    for frame in SimulatorSource(CONFIG, seed=seed):
        session.submit(frame)
        if during is not None:
            during(session, frame.index)
    return session.close()


def _stored_frames(stack: LocalStack, report: SessionReport) -> list[int]:
    """Frame indices of the session as the tracker's store holds them, duplicates included."""
    with sqlite3.connect(stack.workdir / "tracker.db") as db:
        rows = db.execute(
            "SELECT frame_index FROM frames JOIN sessions USING (sid) "
            "WHERE session_id = ? ORDER BY frame_index",
            (report.session_id,),
        ).fetchall()
    return [int(r[0]) for r in rows]


@pytest.fixture
def own_stack(tmp_path: Path):
    with LocalStack(tmp_path / "stack") as stack:
        yield stack


def test_four_microscopes_share_one_pool_fairly(own_stack: LocalStack) -> None:
    reports: dict[int, SessionReport] = {}
    threads = [
        threading.Thread(target=lambda s=s: reports.__setitem__(s, _stream(own_stack, s))) for s in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    rates = []
    for seed, report in reports.items():
        assert report.failed == [], report.failed
        assert _stored_frames(own_stack, report) == list(range(CONFIG.n_frames)), f"microscope {seed}"
        rates.append(report.frames_per_s)
    assert min(rates) >= 0.8 * max(rates), f"frames/s per microscope: {rates}"


def test_triton_crash_and_restart_mid_run_loses_and_doubles_nothing(own_stack: LocalStack) -> None:
    def crash_triton(session: MicroscopeSession, index: int) -> None:
        if index == 15:
            own_stack.kill_triton()
            time.sleep(1.0)
            own_stack.start_triton()

    report = _stream(own_stack, 1, crash_triton)
    assert report.failed == []
    assert report.triton_reconnects >= 1
    assert _stored_frames(own_stack, report) == list(range(CONFIG.n_frames))


def test_tracker_crash_and_restart_mid_run_loses_and_doubles_nothing(own_stack: LocalStack) -> None:
    def crash_tracker(session: MicroscopeSession, index: int) -> None:
        if index == 15:
            own_stack.kill_tracker()
            time.sleep(1.0)
            own_stack.start_tracker()

    report = _stream(own_stack, 2, crash_tracker)
    assert report.failed == []
    assert report.tracker_reconnects >= 1
    assert report.frames_stored == CONFIG.n_frames
    assert _stored_frames(own_stack, report) == list(range(CONFIG.n_frames))
    with grpc.insecure_channel(own_stack.tracker_url) as channel:
        stats = pb_grpc.TrackerStub(channel).GetStatistics(
            pb.StatisticsRequest(session_id=report.session_id), metadata=auth_metadata(own_stack.token)
        )
    assert [f.frame_index for f in stats.frames] == list(range(CONFIG.n_frames))
