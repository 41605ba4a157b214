"""A/B rollout: arm assignment, policy file reloads, shadow agreement, the rollout CLI's offline parts."""

from __future__ import annotations

import json
import logging
import os
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from loopstream.client.shadow import agreement
from loopstream.core.detections import LOOP_COLUMNS
from loopstream.ops import rollout_cli
from loopstream.serving.processes import free_port
from loopstream.tracker.engine import TrackerEngine
from loopstream.tracker.rollout import (
    PolicyFile,
    RolloutPolicy,
    Shadow,
    assign_arm,
    promote,
    rollback,
    shadow_version,
    with_weights,
    write_policy,
)
from loopstream.tracker.store import Store

PIPELINE = "loops_semantic"
SESSION_IDS = [str(uuid.uuid5(uuid.NAMESPACE_URL, f"session/{i}")) for i in range(1000)]


@pytest.mark.parametrize("arms", [{"1": 0.9, "2": 0.1}, {"1": 0.5, "2": 0.3, "3": 0.2}])
def test_arm_shares_follow_the_weights(arms: dict[str, float]) -> None:
    policy = RolloutPolicy(PIPELINE, arms)
    shares = pd.Series([assign_arm(policy, s) for s in SESSION_IDS]).value_counts(normalize=True)
    for version, weight in arms.items():
        assert abs(shares.get(version, 0.0) - weight) <= 0.03, f"arm {version}: {shares.to_dict()}"
    assert [assign_arm(policy, s) for s in SESSION_IDS[:50]] == [
        assign_arm(policy, s) for s in SESSION_IDS[:50]
    ]


def test_sessions_keep_their_arm_and_policy_changes_steer_new_sessions_only(tmp_path: Path) -> None:
    """The real tracker engine and store assign through the policy file, as the tracker will."""
    path = tmp_path / "ab-policy.json"
    write_policy(path, RolloutPolicy(PIPELINE, {"1": 0.9, "2": 0.1}))
    policies = PolicyFile(path)
    spec = {"microscope_id": "m1", "pixel_size_nm": 1.0, "frame_rate_hz": 10.0}
    with Store(tmp_path / "tracker.db", synchronous="NORMAL") as store:
        engine = TrackerEngine(store, assign=policies.assign)

        def open_sessions(n: int) -> dict[str, str]:
            return {
                s["session_id"]: s["model_version"] for s in (engine.open_session(spec) for _ in range(n))
            }

        trial = open_sessions(200)
        assert set(trial.values()) == {"1", "2"}
        write_policy(path, promote(policies.current(), "2"))
        promoted = open_sessions(50)
        write_policy(path, rollback(policies.current(), "1"))
        rolled_back = open_sessions(50)

        assert set(promoted.values()) == {"2"} and set(rolled_back.values()) == {"1"}
        for opened in (trial, promoted, rolled_back):
            for session_id, version in opened.items():
                assert engine.session(session_id)["model_version"] == version, "a session changed arm"


def test_promote_and_rollback_produce_new_policies() -> None:
    trial = RolloutPolicy(PIPELINE, {"1": 0.9, "2": 0.1}, Shadow("2", 0.05))
    assert promote(trial, "2") == RolloutPolicy(PIPELINE, {"2": 1.0})
    assert rollback(trial, "1") == RolloutPolicy(PIPELINE, {"1": 1.0}), "a rollback also stops the shadow"
    assert with_weights(trial, {"1": 0.8, "2": 0.2}).shadow == Shadow("2", 0.05)
    assert trial.versions == ["1", "2"] and trial.control == "1"


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ('{"pipeline": "p", "arms": {"1": 0.9, "2": 0.2}}', "sum to 1.1"),
        ('{"pipeline": "p", "arms": {"1": 1.2, "2": -0.2}}', "numbers >= 0"),
        ('{"pipeline": "p", "arms": {"1": 1.0}, "wieghts": {}}', r"unknown policy keys \['wieghts'\]"),
        ('{"pipeline": "p", "arms": {"1": 1.0}, "shadow": {"version": "2"}}', '"shadow" must be'),
        ('{"pipeline": "p", "arms": {"v1": 1.0}}', "not a Triton model version"),
        ('{"pipeline": "p", "arms": {"1": 1.0}, "shadow": {"version": "2", "fraction": 2}}', r"\(0, 1\]"),
        ('{"pipeline": "", "arms": {"1": 1.0}}', '"pipeline" must name'),
        ('{"pipeline": "p", "arms": {"1": 1.0}', "not valid JSON"),
    ],
)
def test_bad_policies_are_rejected_with_the_reason(text: str, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        RolloutPolicy.from_json(text)


def test_weights_may_be_off_by_rounding_only() -> None:
    assert RolloutPolicy(PIPELINE, {"1": 0.7, "2": 0.2, "3": 0.1 + 5e-7}).arms["3"] == pytest.approx(
        0.1, abs=1e-6
    )


def test_policy_file_reloads_and_keeps_the_last_good_policy(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "ab-policy.json"
    write_policy(path, RolloutPolicy(PIPELINE, {"1": 1.0}))
    policies = PolicyFile(path)
    path.write_text(json.dumps({"pipeline": PIPELINE, "arms": {"1": 0.9, "2": 0.1}}))  # edited in place
    assert policies.current().arms == {"1": 0.9, "2": 0.1}
    with caplog.at_level(logging.ERROR, "loopstream.tracker.rollout"):
        path.write_text(json.dumps({"pipeline": PIPELINE, "arms": {"1": 0.9, "2": 0.2}}))
        assert policies.current().arms == {"1": 0.9, "2": 0.1}, "a bad edit must keep the last good policy"
        assert policies.current().arms == {"1": 0.9, "2": 0.1}
    assert len(caplog.records) == 1 and "sum to 1.1" in caplog.records[0].getMessage()
    write_policy(path, promote(policies.current(), "2"))
    assert policies.current().arms == {"2": 1.0}


def test_policy_file_follows_a_configmap_symlink_swap(tmp_path: Path) -> None:
    """The kubelet writes a new timestamped directory and renames the ``..data`` link onto it."""

    def publish(name: str, arms: dict[str, float]) -> None:
        (tmp_path / name).mkdir()
        (tmp_path / name / "ab-policy.json").write_text(RolloutPolicy(PIPELINE, arms).to_json())
        os.symlink(name, tmp_path / "..data_tmp")
        os.replace(tmp_path / "..data_tmp", tmp_path / "..data")

    publish("..2026_11_25_a", {"1": 0.9, "2": 0.1})
    os.symlink("..data/ab-policy.json", tmp_path / "ab-policy.json")
    policies = PolicyFile(tmp_path / "ab-policy.json")
    publish("..2026_11_25_b", {"1": 0.1, "2": 0.9})  # same size, possibly the same mtime
    assert policies.current().arms == {"1": 0.1, "2": 0.9}


def test_shadow_decision_is_stable_per_frame_and_takes_its_fraction() -> None:
    policy = RolloutPolicy(PIPELINE, {"1": 0.9, "2": 0.1}, Shadow("2", 0.1))
    decisions = [shadow_version(policy, "1", "session-a", frame) for frame in range(2000)]
    assert decisions == [shadow_version(policy, "1", "session-a", frame) for frame in range(2000)]
    assert set(decisions) == {None, "2"} and abs(decisions.count("2") / 2000 - 0.1) <= 0.03
    assert shadow_version(policy, "2", "session-b", 0) is None, "a session on the candidate never shadows"
    assert shadow_version(RolloutPolicy(PIPELINE, {"1": 1.0}), "1", "session-a", 0) is None


def _detections(centres: list[tuple[float, float]]) -> np.ndarray:
    rows = [(0.9, x, y, 24.0, 14.0, 30.0, 264.0, x - 12, y - 7, 24.0, 14.0) for x, y in centres]
    return np.array(rows, np.float32).reshape(-1, len(LOOP_COLUMNS))


def test_shadow_agreement_is_one_for_identical_detections_and_lower_for_shifted_ones() -> None:
    session = _detections([(40, 40), (100, 60), (160, 200), (300, 120)])
    assert agreement(session, session).f1 == 1.0
    as_table = pd.DataFrame(session, columns=LOOP_COLUMNS)
    assert agreement(as_table, session).f1 == 1.0
    nudged = session.copy()
    nudged[:, 1] += 1.0  # a pixel off: still the same loops
    assert agreement(session, nudged).f1 == 1.0
    half_moved = session.copy()
    half_moved[:2, 1:3] += 15.0
    shifted = agreement(session, half_moved)
    assert shifted.f1 == 0.5 and shifted.matched == 2
    extra = agreement(session, _detections([(40, 40), (100, 60), (160, 200), (300, 120), (400, 400)]))
    assert extra.count_difference == 1 and 0.8 < extra.f1 < 1.0
    assert agreement(session[:0], session[:0]).f1 == 1.0


def test_compare_shows_differences_against_the_control_arm() -> None:
    stats = pd.DataFrame(
        {
            "arm_version": [1, 2],
            "sessions": [90, 10],
            "frames": [9000, 1000],
            "loops_per_frame": [20.0, 25.0],
            "mean_major_nm": [12.0, 11.4],
            "latency_p50_s": [0.20, 0.22],
            "shadow_f1": [0.91, np.nan],
            "shadow_frames": [450, 0],
        }
    )
    table = rollout_cli.compare_arms(stats, "1")
    out = rollout_cli.format_comparison(table, "1")
    assert "1 (control)" in out and "25 (+5, +25.0 %)" in out and "0.910 (450 frames)" in out
    assert table.loc["2", "loops_per_frame_rel_pct"] == pytest.approx(25.0)
    assert table.loc["2", "mean_major_nm_diff"] == pytest.approx(-0.6)
    with pytest.raises(ValueError, match="control arm '3'"):
        rollout_cli.compare_arms(stats, "3")


def test_policy_changes_are_refused_unless_every_replica_serves_the_version(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    path = tmp_path / "ab-policy.json"
    write_policy(path, RolloutPolicy(PIPELINE, {"1": 1.0}))
    before = path.read_text()
    dead = f"127.0.0.1:{free_port()}"  # nothing listens there: the replica is down
    for command, needed in ((["set-weights", "1=0.9", "2=0.1"], ["1", "2"]), (["promote", "2"], ["2"])):
        assert rollout_cli.main(["--policy-file", str(path), "--replicas", dead, *command]) == 1
        err = capsys.readouterr().err
        assert f"refused: the new policy needs versions {needed} of {PIPELINE}" in err
        assert dead in err and "Connection refused" in err
    assert rollout_cli.main(["--policy-file", str(path), "--replicas", dead, "set-weights", "1=0.9"]) == 1
    assert "sum to 0.9" in capsys.readouterr().err
    assert path.read_text() == before
