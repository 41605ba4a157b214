"""A session the tracker leaves on "latest" stays on the version it started with.

Real Triton (explicit model control, two versions that answer differently), real tracker without
an A/B policy: a newer version loaded mid-session serves new sessions, never the running one.
"""

from __future__ import annotations

import re
import socket
import time

import pytest
import tritonclient.grpc as triton

from loopstream.client.inference import pinned_version
from loopstream.client.session import Endpoints, MicroscopeSession
from loopstream.client.sources import Frame, SimulatorSource
from loopstream.core.simulator import SimulationConfig
from loopstream.dev.stack import LocalStack
from loopstream.serving.versions import serve_versions
from loopstream.tracker.store import Store
from loopstream.v1 import tracker_pb2 as pb
from tests.conftest import differing_versions, infer_detections, write_versions

PIPELINE = "loops_semantic"
SPECS = differing_versions(min_area_px=500)
CONFIG = SimulationConfig(shape=(256, 256), n_frames=8)
FRAMES: list[Frame] = list(SimulatorSource(CONFIG, seed=11))
SPEC = pb.SessionSpec(
    microscope_id="pinned", pixel_size_nm=CONFIG.pixel_size_nm, frame_rate_hz=CONFIG.frame_rate_hz
)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("pinned")
    with LocalStack(
        root / "stack",
        repository=write_versions(root, SPECS),
        model_control="explicit",
        load_models=(f"{PIPELINE}_core", PIPELINE),
    ) as running:
        yield running


def _loop_counts(url: str, version: str) -> list[int]:
    return [len(infer_detections(url, PIPELINE, frame.image, version)) for frame in FRAMES]


def _wait_stored(session: MicroscopeSession, frames: int, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while session.report.frames_stored < frames:
        assert time.monotonic() < deadline, f"only {session.report.frames_stored} of {frames} frames stored"
        time.sleep(0.05)


def test_a_version_loaded_mid_session_serves_new_sessions_only(stack: LocalStack) -> None:
    expected = {v: _loop_counts(stack.triton_url, str(v)) for v in SPECS}
    assert expected[1] != expected[2], "the versions must answer differently for this test to mean anything"
    endpoints = Endpoints(stack.triton_url, stack.tracker_url, stack.token, reconnect_timeout_s=30)
    with triton.InferenceServerClient(stack.triton_url) as client:
        serve_versions(client, PIPELINE, [1])
        session = MicroscopeSession(endpoints, SPEC)
        assert session.session.model_version == "", "without a policy the tracker names no version"
        assert session.report.model == f"{PIPELINE}:1"
        half = len(FRAMES) // 2
        for frame in FRAMES[:half]:
            session.submit(frame)
        _wait_stored(session, half)
        serve_versions(client, PIPELINE, [1, 2])
        for frame in FRAMES[half:]:
            session.submit(frame)
        report = session.close()
    assert report.failed == [] and report.frames_stored == len(FRAMES)
    with Store(stack.workdir / "tracker.db") as store:
        stored = store.frames(report.session_id)
    assert set(stored.model_version) == {"1"}, "a frame after the load went to the new version"
    assert stored.sort_values("frame_index").loop_count.tolist() == expected[1]

    newer = MicroscopeSession(endpoints, SPEC)
    newer.close()
    assert newer.report.model == f"{PIPELINE}:2"


def test_no_ready_version_is_a_clear_error(stack: LocalStack) -> None:
    with pytest.raises(ConnectionError, match=r"no version of loops_instance is ready.*start Triton"):
        pinned_version(stack.triton_url, "loops_instance", timeout_s=1.0)
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        nobody = f"127.0.0.1:{free.getsockname()[1]}"
    with pytest.raises(ConnectionError, match=re.escape(f"Triton at {nobody} has no ready version")):
        pinned_version(nobody, PIPELINE, timeout_s=1.0)
    assert pinned_version(nobody, PIPELINE, requested="7") == "7", "a named version is taken as it is"
