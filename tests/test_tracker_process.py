"""The ``loopstream-tracker`` command as a real process: kill -9 and restart, SIGTERM, configuration."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest

from loopstream.core.simulator import SimulatedMicroscope, SimulationConfig
from loopstream.dev import synthetic
from loopstream.tracker.client import TrackerClient, frame_message
from loopstream.tracker.server import ServerConfig, serve
from loopstream.tracker.store import SCHEMA_VERSION, Store
from loopstream.v1 import tracker_pb2 as pb
from tests.conftest import schema_1_store

TOKEN = "process-token-81c2"
COMMAND = str(Path(sys.executable).parent / "loopstream-tracker")
CONFIG = SimulationConfig(
    shape=(256, 256), n_frames=120, initial_loops=150, initial_major_px=(6.0, 14.0), max_major_px=20.0
)
MIC = SimulatedMicroscope(CONFIG, seed=5)
SPEC = pb.SessionSpec(
    microscope_id="m1", pixel_size_nm=CONFIG.pixel_size_nm, frame_rate_hz=10.0, dose_rate_ions_cm2_s=1e11
)


def messages(session_id: str, start: int = 0, stop: int = CONFIG.n_frames, pause_s: float = 0.0):
    for i in range(start, stop):
        yield frame_message(session_id, i, i / 10.0, synthetic.detections(MIC, i), 256, 256)
        time.sleep(pause_s)


def start(tmp_path: Path, args: list[str], env: dict[str, str]) -> tuple[subprocess.Popen, int, Path]:
    """Start the tracker; return it once its --port-file names the bound port."""
    port_file = tmp_path / f"port-{time.monotonic_ns()}"
    log = tmp_path / f"log-{time.monotonic_ns()}"
    proc = subprocess.Popen(
        [COMMAND, "--port-file", str(port_file), *args],
        env={**os.environ, **env},
        stderr=log.open("wb"),
    )
    deadline = time.monotonic() + 30
    while not port_file.exists():
        assert proc.poll() is None, f"tracker exited with {proc.returncode}: {log.read_text()}"
        assert time.monotonic() < deadline, "tracker did not start within 30 s"
        time.sleep(0.05)
    return proc, int(port_file.read_text()), log


def test_kill_9_mid_stream_then_resend_stores_every_frame_once(tmp_path):
    env = {
        "LOOPSTREAM_TRACKER_DB": str(tmp_path / "tracker.db"),
        "LOOPSTREAM_TRACKER_PORT": "0",
        "LOOPSTREAM_TRACKER_METRICS_PORT": "-1",
        "LOOPSTREAM_TRACKER_TOKEN": TOKEN,
    }
    proc, port, _ = start(tmp_path, [], env)
    client = TrackerClient(f"127.0.0.1:{port}", TOKEN)
    sid = client.OpenSession(SPEC).session_id
    acked = []
    with pytest.raises(grpc.RpcError):
        for ack in client.stream(messages(sid)):
            assert ack.accepted
            acked.append(ack.frame_index)
            if ack.frame_index == 50:
                proc.kill()  # SIGKILL while later frames are in flight
    proc.wait(10)
    client.close()
    assert acked == list(range(len(acked))) and 51 <= len(acked) < CONFIG.n_frames

    proc, port, _ = start(tmp_path, [], env)
    try:
        client = TrackerClient(f"127.0.0.1:{port}", TOKEN)
        resent = list(client.stream(messages(sid, start=acked[-1] + 1)))
        assert all(a.accepted for a in resent)
        duplicates = [a.frame_index for a in resent if a.duplicate]
        assert duplicates == list(range(acked[-1] + 1, acked[-1] + 1 + len(duplicates)))
        session = client.GetSession(pb.SessionRef(session_id=sid))
        assert (session.frames_stored, session.last_frame_index) == (CONFIG.n_frames, CONFIG.n_frames - 1)
        stats = client.GetStatistics(pb.StatisticsRequest(session_id=sid))
        tracks = client.GetTracks(pb.TracksRequest(session_id=sid))
        client.close()
    finally:
        proc.terminate()
        proc.wait(10)
    with Store(tmp_path / "tracker.db") as store:
        detections = store.detections(sid)
    assert not detections.duplicated(["frame_index", "loop_index"]).any()
    assert len(detections) == sum(f.loop_count for f in stats.frames)

    # The same frames through one uninterrupted tracker give identical statistics and tracks.
    reference = serve(ServerConfig(db=tmp_path / "reference.db", port=0, metrics_port=-1))
    try:
        ref_client = TrackerClient(f"127.0.0.1:{reference.port}")
        ref_sid = ref_client.OpenSession(SPEC).session_id
        assert all(a.accepted for a in ref_client.stream(messages(ref_sid)))
        ref_stats = ref_client.GetStatistics(pb.StatisticsRequest(session_id=ref_sid))
        ref_tracks = ref_client.GetTracks(pb.TracksRequest(session_id=ref_sid))
        ref_client.close()
    finally:
        reference.stop(0.5)
    for reply in (stats, tracks, ref_stats, ref_tracks):
        reply.session_id = ""
    assert stats.SerializeToString() == ref_stats.SerializeToString()
    assert tracks.SerializeToString() == ref_tracks.SerializeToString()


def test_sigterm_finishes_commits_and_exits_cleanly(tmp_path):
    db = tmp_path / "tracker.db"
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    policy = tmp_path / "ab-policy.json"
    policy.write_text('{"pipeline": "loops_semantic", "arms": {"2": 1.0}}')
    args = [
        "--port=0",
        "--metrics-port=0",
        f"--db={db}",
        f"--token-file={token_file}",
        f"--ab-policy={policy}",
    ]
    proc, port, log = start(tmp_path, args, {})
    client = TrackerClient(f"127.0.0.1:{port}", TOKEN)
    session = client.OpenSession(SPEC)
    assert (session.model_name, session.model_version) == ("loops_semantic", "2")
    sid = session.session_id
    acks, stopped_at = [], None
    try:
        for ack in client.stream(messages(sid, pause_s=0.01)):
            acks.append(ack)
            if len(acks) == 20:
                proc.send_signal(signal.SIGTERM)
                stopped_at = time.monotonic()
    except grpc.RpcError as e:
        assert e.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)
    assert proc.wait(10) == 0
    assert time.monotonic() - stopped_at < 5.0
    client.close()

    accepted = [a.frame_index for a in acks if a.accepted]
    assert len(accepted) >= 20 and len(accepted) < CONFIG.n_frames
    assert all("shutting down" in a.error for a in acks if not a.accepted)
    with Store(db) as store:
        assert store.frames(sid).frame_index.tolist() == accepted  # acknowledged = stored, nothing more

    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert lines[0]["msg"] == "listening" and lines[0]["port"] == port and lines[0]["metrics_port"] > 0
    assert lines[0]["auth"] is True
    assert [line["msg"] for line in lines[-2:]] == ["stopping", "stopped"]


def run_to_exit(*args: str) -> tuple[int, list[dict]]:
    """Run the tracker with no LOOPSTREAM_TRACKER_* settings until it exits: its code and log lines."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOOPSTREAM_TRACKER_")}
    result = subprocess.run([COMMAND, *args], env=env, capture_output=True, text=True, timeout=60)
    return result.returncode, [json.loads(line) for line in result.stderr.splitlines()]


def test_refuses_to_start_without_a_token_unless_told(tmp_path):
    code, log = run_to_exit("--port", "0", "--metrics-port", "-1", "--db", str(tmp_path / "t.db"))
    assert code == 2
    assert "--no-auth" in log[-1]["error"]


def test_migrate_only_brings_an_old_store_to_this_schema_and_exits(tmp_path):
    """What the Helm chart's init container runs before the tracker starts (no token needed)."""
    path = tmp_path / "old.db"
    schema_1_store(path).close()
    code, log = run_to_exit("--db", str(path), "--migrate-only")
    assert code == 0, log
    assert [line["msg"] for line in log] == ["migrating the store", "store migrated", "store ready"]
    assert (log[0]["from_schema"], log[-1]["schema"]) == (1, SCHEMA_VERSION)
    with Store(path) as store:
        assert store.schema_version() == SCHEMA_VERSION

    corrupt = tmp_path / "not-a-store.db"
    corrupt.write_bytes(b"this is not SQLite" * 100)
    for args, msg in [
        (["--migrate-only"], "cannot migrate the store"),
        (["--no-auth", "--port", "0", "--metrics-port", "-1"], "cannot start"),
    ]:
        code, log = run_to_exit("--db", str(corrupt), *args)
        assert code == 2
        assert log[-1]["msg"] == msg and "--db must name a tracker store" in log[-1]["error"]
