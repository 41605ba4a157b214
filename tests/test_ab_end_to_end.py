"""A/B rollout end to end: a real Triton serving two pipeline versions, a real tracker with a policy file.

Sessions are assigned arms by the tracker, analysed by their arm's version, measured per arm;
shadow mode records agreement without touching the session's results; promote steers new sessions.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pandas as pd
import pytest

from loopstream.client.session import Endpoints, MicroscopeSession
from loopstream.client.sources import Frame, SimulatorSource
from loopstream.core.detections import shadows_frame
from loopstream.core.simulator import SimulationConfig
from loopstream.dev.stack import LocalStack
from loopstream.ops import rollout_cli
from loopstream.tracker.client import TrackerClient
from loopstream.tracker.rollout import RolloutPolicy, Shadow, promote, write_policy
from loopstream.tracker.store import Store
from loopstream.v1 import tracker_pb2 as pb
from tests.conftest import differing_versions, stored_ab_frames, write_versions

PIPELINE = "loops_semantic"
SPECS = differing_versions(min_area_px=500)
CONFIG = SimulationConfig(shape=(256, 256), n_frames=10)
FRAMES: list[Frame] = list(SimulatorSource(CONFIG, seed=7))
TRIAL = RolloutPolicy(PIPELINE, {"1": 0.5, "2": 0.5})
SPEC = pb.SessionSpec(
    microscope_id="ab", pixel_size_nm=CONFIG.pixel_size_nm, frame_rate_hz=CONFIG.frame_rate_hz
)
LOOP_VALUES = ["score", "x_px", "y_px", "major_px", "minor_px", "angle_deg", "area_px", "track_id"]


@pytest.fixture(scope="module")
def ab_stack(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("ab")
    repository = write_versions(root, SPECS)
    policy = root / "ab-policy.json"
    write_policy(policy, TRIAL)
    stack = LocalStack(
        root / "stack",
        repository=repository,
        model_control="explicit",
        load_models=(f"{PIPELINE}_core", PIPELINE),
        ab_policy=policy,
    )
    with stack:
        yield stack


def _policy_path(stack: LocalStack) -> Path:
    assert stack.ab_policy is not None
    return stack.ab_policy


def _client(stack: LocalStack) -> TrackerClient:
    return TrackerClient(stack.tracker_url, stack.token)


def _stream(stack: LocalStack, want_arm: str) -> MicroscopeSession:
    """Open sessions until the tracker assigns ``want_arm``; stream every frame through that one."""
    endpoints = Endpoints(stack.triton_url, stack.tracker_url, stack.token, reconnect_timeout_s=30)
    for _ in range(40):  # 2^-40 odds of never drawing a 50 % arm
        session = MicroscopeSession(endpoints, SPEC)
        if session.session.model_version == want_arm:
            with session:
                for frame in FRAMES:
                    session.submit(frame)
            assert session.report.failed == [] and session.report.frames_stored == len(FRAMES)
            return session
        session.close()
    raise AssertionError(f"no session was assigned arm {want_arm}")


def _stored(stack: LocalStack, session_id: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(detections, per-frame arm/latency/shadow) as the tracker stored them."""
    with Store(stack.workdir / "tracker.db") as store:
        detections = store.detections(session_id)[["frame_index", *LOOP_VALUES]]
    return detections, stored_ab_frames(stack.workdir / "tracker.db", session_id)


def _arms(stack: LocalStack, since: float) -> dict[str, pb.ArmStatistics]:
    client = _client(stack)
    try:
        reply = client.GetArmStatistics(pb.ArmStatisticsRequest(pipeline=PIPELINE, since_unix_s=since))
    finally:
        client.close()
    return {arm.arm_version: arm for arm in reply.arms}


@pytest.fixture(scope="module")
def trial(ab_stack: LocalStack) -> dict:
    """Under weights {1: 0.5, 2: 0.5} without shadow: one streamed session per arm."""
    write_policy(_policy_path(ab_stack), TRIAL)
    started = time.time()
    streamed = {arm: _stream(ab_stack, arm).session for arm in ("1", "2")}
    return {"started": started, "sessions": streamed}


def test_sessions_get_both_arms_and_their_arm_analyses_every_frame(ab_stack: LocalStack, trial: dict) -> None:
    client = _client(ab_stack)
    try:
        opened = [client.OpenSession(SPEC) for _ in range(20)]
        assert {s.model_version for s in opened} == {"1", "2"}
        assert all(s.shadow_model_version == "" and s.shadow_fraction == 0 for s in opened)
        for arm, session in trial["sessions"].items():
            assert session.model_version == arm
            assert client.GetSession(pb.SessionRef(session_id=session.session_id)).model_version == arm
        listed = client.ListSessions(pb.ListSessionsRequest(include_closed=True)).sessions
        since = [s.model_version for s in listed if s.opened_at_unix_s >= trial["started"]]
    finally:
        client.close()
    loops = {}
    for arm, session in trial["sessions"].items():
        detections, frames = _stored(ab_stack, session.session_id)
        assert frames.frame_index.tolist() == [f.index for f in FRAMES]
        assert set(frames.model_version) == {arm}, "a frame was analysed by another arm's version"
        assert (frames.latency_s > 0).all() and frames.shadow_model_version.isna().all()
        loops[arm] = len(detections)
    assert loops["2"] < loops["1"], "version 2 keeps only large loops: the arms must differ"

    arms = _arms(ab_stack, trial["started"])
    assert set(arms) == {"1", "2"}
    for arm in ("1", "2"):
        stats = arms[arm]
        assert stats.sessions == since.count(arm)
        assert stats.frames == len(FRAMES) and stats.shadow_frames == 0
        assert stats.loops_per_frame == pytest.approx(loops[arm] / len(FRAMES))
        assert 0 < stats.latency_p50_s < 10 and stats.mean_major_nm > 0


def test_shadow_records_agreement_without_changing_the_sessions_results(
    ab_stack: LocalStack, trial: dict, capsys: pytest.CaptureFixture
) -> None:
    write_policy(_policy_path(ab_stack), RolloutPolicy(PIPELINE, TRIAL.arms, Shadow("2", 0.5)))
    started = time.time()
    session = _stream(ab_stack, "1")
    sid = session.session.session_id
    assert (session.session.shadow_model_version, session.session.shadow_fraction) == ("2", 0.5)
    shadowed = [f.index for f in FRAMES if shadows_frame(sid, f.index, 0.5)]
    assert session.report.shadowed == len(shadowed)

    detections, frames = _stored(ab_stack, sid)
    reference, _ = _stored(ab_stack, trial["sessions"]["1"].session_id)
    pd.testing.assert_frame_equal(detections, reference, obj="the session's detections with shadow")
    assert set(frames.model_version) == {"1"}
    recorded = frames.dropna(subset=["shadow_model_version"])
    assert recorded.frame_index.tolist() == shadowed
    assert set(recorded.shadow_model_version) <= {"2"}
    assert recorded.shadow_f1.between(0, 1).all() and (recorded.shadow_latency_s > 0).all()
    assert (recorded.shadow_matched <= recorded.shadow_candidate_loop_count).all()

    stats = _arms(ab_stack, started)["1"]
    assert stats.shadow_frames == len(shadowed)
    if shadowed:
        loops = detections.frame_index.isin(shadowed).sum() + recorded.shadow_candidate_loop_count.sum()
        assert stats.shadow_f1 == pytest.approx(2 * recorded.shadow_matched.sum() / loops if loops else 1.0)

    # "=": a token may start with "-" (token_urlsafe), which argparse would read as an option
    flags = ["--tracker", ab_stack.tracker_url, f"--token={ab_stack.token}"]
    assert rollout_cli.main([*flags, "compare", "--since", str(started)]) == 0
    out = capsys.readouterr().out
    assert "1 (control)" in out and f"({len(shadowed)} frames)" in out


def test_promote_steers_new_sessions_only(
    ab_stack: LocalStack, trial: dict, capsys: pytest.CaptureFixture
) -> None:
    write_policy(_policy_path(ab_stack), promote(TRIAL, "2"))
    client = _client(ab_stack)
    try:
        policy = client.GetPolicy(pb.PolicyRequest())
        assert json.loads(policy.policy_json)["arms"] == {"2": 1.0}
        assert time.time() - 60 < policy.loaded_at_unix_s <= time.time()
        assert {client.OpenSession(SPEC).model_version for _ in range(10)} == {"2"}
        for arm, session in trial["sessions"].items():
            assert client.GetSession(pb.SessionRef(session_id=session.session_id)).model_version == arm
    finally:
        client.close()
    flags = ["--policy-file", str(_policy_path(ab_stack)), "--tracker", ab_stack.tracker_url]
    assert rollout_cli.main([*flags, f"--token={ab_stack.token}", "status"]) == 0
    out = capsys.readouterr().out
    assert "(as in the file)" in out and "arm 2: 100.0 % of new sessions" in out


def test_a_failing_candidate_never_fails_the_sessions_frames(ab_stack: LocalStack, trial: dict) -> None:
    """Version 3 is in no repository: every shadow request fails, every session frame is stored."""
    write_policy(_policy_path(ab_stack), RolloutPolicy(PIPELINE, TRIAL.arms, Shadow("3", 1.0)))
    session = _stream(ab_stack, "1")
    assert session.report.shadowed == 0
    detections, frames = _stored(ab_stack, session.session.session_id)
    reference, _ = _stored(ab_stack, trial["sessions"]["1"].session_id)
    pd.testing.assert_frame_equal(detections, reference)
    assert frames.shadow_model_version.isna().all()
