"""Issue 14 items 5-12: what a hostile or broken client can send the tracker, and what its store
can suffer (full disk, damaged file), against a real server on 127.0.0.1 and real SQLite files."""

from __future__ import annotations

import errno
import os
import sqlite3
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import grpc
import pandas as pd
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from loopstream.core.simulator import SimulatedMicroscope, SimulationConfig
from loopstream.dev import synthetic
from loopstream.tracker import export
from loopstream.tracker.client import frame_message
from loopstream.tracker.engine import TrackerEngine
from loopstream.tracker.server import SERVICE_NAME
from loopstream.tracker.store import HOME_VARIANCE_COLUMNS, MIGRATIONS, SCHEMA_VERSION, Store
from loopstream.tracker.validation import MAX_FRAME_INDEX, MAX_ID_CHARS, FrameInput
from loopstream.v1 import tracker_pb2 as pb
from loopstream.v1 import tracker_pb2_grpc as pb_grpc
from tests.conftest import TRACKER_TOKEN, serve_tracker, tracker_client

COMMAND = str(Path(sys.executable).parent / "loopstream-tracker")
CONFIG = SimulationConfig(shape=(256, 256), n_frames=40, initial_loops=150, initial_major_px=(6.0, 14.0))
MIC = SimulatedMicroscope(CONFIG, seed=3)
SPEC = pb.SessionSpec(microscope_id="jannus-2", pixel_size_nm=0.5, frame_rate_hz=10.0)


@pytest.fixture
def tracker(tmp_path):
    running = serve_tracker(tmp_path / "tracker.db")
    yield running
    running.stop(0.5)


def message(session_id: str, index: int, content: int | None = None, **fields) -> pb.FrameDetections:
    """Frame ``index`` with the loops and time of the simulator's frame ``content`` (default: index)."""
    content = index if content is None else content
    msg = frame_message(session_id, index, content / 10.0, synthetic.detections(MIC, content), 256, 256)
    for name, value in fields.items():
        setattr(msg, name, value)
    return msg


def metrics_text(tracker) -> str:
    url = f"http://127.0.0.1:{tracker.metrics_port}/metrics"
    return urllib.request.urlopen(url, timeout=5).read().decode()


def health(tracker, service: str = "", timeout: float = 5.0) -> int:
    with grpc.insecure_channel(f"127.0.0.1:{tracker.port}") as channel:
        request = health_pb2.HealthCheckRequest(service=service)
        return health_pb2_grpc.HealthStub(channel).Check(request, timeout=timeout).status


# -- item 5: integers stored as INTEGER, every number bounded ----------------------------------


def test_frame_indices_are_stored_exactly_and_bounded(tracker, client):
    sid = client.OpenSession(SPEC).session_id
    top = MAX_FRAME_INDEX
    acks = list(client.stream([message(sid, top - 1, 0), message(sid, top, 1), message(sid, top, 1)]))
    assert [(a.accepted, a.duplicate) for a in acks] == [(True, False), (True, False), (True, True)]
    db = sqlite3.connect(tracker.engine.store.path)
    kinds = db.execute("SELECT DISTINCT typeof(frame_index), typeof(ordinal), typeof(width_px) FROM frames")
    assert kinds.fetchall() == [("integer", "integer", "integer")]
    stored = db.execute("SELECT DISTINCT frame_index, typeof(track_id) FROM detections ORDER BY 1").fetchall()
    assert stored == [(top - 1, "integer"), (top, "integer")]

    too_far = [message(sid, top + 1, 2), message(sid, 2**63 - 1, 2), message(sid, -1, 2)]
    for ack in client.stream(too_far):
        assert not ack.accepted and f"outside 0..{MAX_FRAME_INDEX}" in ack.error, ack.error
    for field, value in [("timestamp_s", 1e300), ("latency_s", 1e12), ("width_px", 2**31 - 1)]:
        (ack,) = client.stream([message(sid, top, 1, **{field: value})])
        assert not ack.accepted and field.split("_")[0] in ack.error, ack.error
    # Nothing stored made the session's record unreadable.
    session = client.GetSession(pb.SessionRef(session_id=sid))
    assert (session.frames_stored, session.last_frame_index) == (2, top)
    assert [s.last_frame_index for s in client.ListSessions(pb.ListSessionsRequest()).sessions] == [top]
    assert client.CloseSession(pb.SessionRef(session_id=sid)).closed


def test_a_schema_3_store_migrates_its_numbers_to_integer(tmp_path):
    path = tmp_path / "v3.db"
    with Store(tmp_path / "new.db") as new:
        engine = TrackerEngine(new)
        sid = engine.open_session({"pixel_size_nm": 0.5, "frame_rate_hz": 10.0})["session_id"]
        for i in range(3):
            loops = synthetic.detections(MIC, i)
            assert engine.ingest(FrameInput(sid, i, i / 10, "m", "1", 256, 256, loops)).accepted
        before = new.detections(sid)
    db = sqlite3.connect(path, isolation_level=None)  # the same store as schema 3 wrote it (REAL)
    for migrate in MIGRATIONS[:3]:
        migrate(db)
    db.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
    db.execute("INSERT INTO schema_version VALUES (3)")
    db.execute("ATTACH ? AS new", (str(tmp_path / "new.db"),))
    for table in ("sessions", "frames", "detections"):
        columns = [r[1] for r in db.execute(f"PRAGMA table_info({table})")]
        names = ", ".join(columns)
        db.execute(f"INSERT INTO {table} ({names}) SELECT {names} FROM new.{table}")
    assert db.execute("SELECT DISTINCT typeof(frame_index) FROM frames").fetchall() == [("real",)]
    db.close()

    with Store(path) as store:
        assert store.schema_version() == SCHEMA_VERSION
        migrated = store.detections(sid)
        pd.testing.assert_frame_equal(
            migrated.drop(columns=HOME_VARIANCE_COLUMNS), before.drop(columns=HOME_VARIANCE_COLUMNS)
        )
        assert migrated[HOME_VARIANCE_COLUMNS].isna().all(axis=None)  # migration 6: not known before it
        assert store.frame_hash(sid, 1) == b""  # stored before hashes: resends are duplicates
        check = sqlite3.connect(path)
        for table, column in [
            ("frames", "frame_index"),
            ("frames", "loop_count"),
            ("detections", "track_id"),
        ]:
            kinds = check.execute(f"SELECT DISTINCT typeof({column}) FROM {table}").fetchall()
            assert kinds == [("integer",)], (table, column)
        engine = TrackerEngine(store)
        again = engine.ingest(FrameInput(sid, 1, 0.1, "m", "1", 256, 256, synthetic.detections(MIC, 1)))
        assert again.duplicate
        assert engine.ingest(
            FrameInput(sid, 3, 0.3, "m", "1", 256, 256, synthetic.detections(MIC, 3))
        ).accepted


# -- item 6: metrics labels only from bounded server-side values; string limits -----------------


def test_rejected_frames_with_huge_strings_do_not_grow_metrics(tracker, client):
    sid = client.OpenSession(SPEC).session_id
    assert all(a.accepted for a in client.stream(message(sid, i) for i in range(2)))
    before = metrics_text(tracker)
    huge = "v" * (256 * 1024)
    hostile = [message(sid, 2 + i, model_version=f"{huge}{i}") for i in range(100)]
    hostile += [message(f"{huge}{i}", 2) for i in range(100)]
    acks = list(client.stream(hostile))
    assert not any(a.accepted for a in acks)
    assert all(f"more than the limit of {MAX_ID_CHARS}" in a.error for a in acks), acks[0].error
    assert all(len(a.error) < 400 for a in acks)
    # Accepted frames whose (valid) model_version varies: the label is the session's stored arm.
    assert all(
        a.accepted for a in client.stream(message(sid, i, model_version=f"x{i}") for i in range(2, 12))
    )
    after = metrics_text(tracker)
    assert len(after) - len(before) < 500, (len(before), len(after))
    assert 'loopstream_tracker_frames_rejected_total{reason="invalid"} 200.0' in after
    assert 'model_version="x' not in after and 'arm="x' not in after
    assert 'loopstream_tracker_frames_total{arm="",microscope="jannus-2",outcome="accepted"} 12.0' in after

    for spec, needle in [
        (pb.SessionSpec(microscope_id="m" * 10_000, pixel_size_nm=1, frame_rate_hz=1), "microscope_id has"),
        (pb.SessionSpec(microscope_id='a"b', pixel_size_nm=1, frame_rate_hz=1), "characters other than"),
        (pb.SessionSpec(sample="s" * 5000, pixel_size_nm=1, frame_rate_hz=1), "sample has 5000"),
        (pb.SessionSpec(pixel_size_nm=1e300, frame_rate_hz=1), "pixel_size_nm"),
        (pb.SessionSpec(pixel_size_nm=1, frame_rate_hz=1, memory_frames=2**31 - 1), "memory_frames"),
    ]:
        with pytest.raises(grpc.RpcError) as e:
            client.OpenSession(spec)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and needle in e.value.details()
    with pytest.raises(grpc.RpcError) as e:
        client.GetSession(pb.SessionRef(session_id=huge))
    assert e.value.code() == grpc.StatusCode.NOT_FOUND and len(e.value.details()) < 300


def test_microscope_labels_are_capped(tracker, client, monkeypatch):
    monkeypatch.setattr(tracker.metrics, "_microscopes", {f"seen-{i}" for i in range(64)})
    sid = client.OpenSession(SPEC).session_id
    assert all(a.accepted for a in client.stream([message(sid, 0)]))
    text = metrics_text(tracker)
    assert 'microscope="other",outcome="accepted"} 1.0' in text and "jannus-2" not in text


# -- item 7: long-lived streams do not starve unary calls and health ---------------------------


def test_200_watchers_leave_health_and_unary_calls_prompt(tracker, client):
    sid = client.OpenSession(SPEC).session_id
    assert all(a.accepted for a in client.stream([message(sid, 0)]))
    channels = [grpc.insecure_channel(f"127.0.0.1:{tracker.port}") for _ in range(8)]
    metadata = (("authorization", f"Bearer {TRACKER_TOKEN}"),)
    watches = []

    def prompt_answers() -> None:
        """Each call within 1 s (a starved server misses the 2 s deadline; the bound leaves room for
        a loaded shared CI machine)."""
        calls = [
            lambda: health(tracker, timeout=2.0) == health_pb2.HealthCheckResponse.SERVING,
            lambda: client.GetSession(pb.SessionRef(session_id=sid), timeout=2.0).frames_stored == 1,
            lambda: client.GetPolicy(pb.PolicyRequest(), timeout=2.0) is not None,
        ]
        for call in calls * 3:
            started = time.monotonic()
            assert call()
            assert time.monotonic() - started < 1.0

    try:
        for i in range(200):  # a deadline only so that a starved server fails rather than hangs
            watches.append(
                pb_grpc.TrackerStub(channels[i % 8]).WatchStatistics(
                    pb.WatchRequest(session_id=sid), metadata=metadata, timeout=60
                )
            )
        time.sleep(1.0)
        prompt_answers()
        assert all(next(w).frame_index == 0 for w in watches)  # every one open and served
        prompt_answers()
        # Frames still flow and reach every watcher.
        assert all(a.accepted for a in client.stream([message(sid, 1)]))
        assert all(next(w).frame_index == 1 for w in watches)
    finally:
        for w in watches:
            w.cancel()
        for c in channels:
            c.close()


def test_one_watcher_past_the_limit_is_refused_clearly(tmp_path):
    running = serve_tracker(tmp_path / "t.db", max_watchers=2)
    client = tracker_client(running)
    try:
        sid = client.OpenSession(SPEC).session_id
        watches = [client.WatchStatistics(pb.WatchRequest(session_id=sid)) for _ in range(2)]
        assert all(a.accepted for a in client.stream([message(sid, 0)]))
        assert [next(w).frame_index for w in watches] == [0, 0]
        with pytest.raises(grpc.RpcError) as e:
            next(client.WatchStatistics(pb.WatchRequest(session_id=sid)))
        assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert (
            "2 WatchStatistics streams are open" in e.value.details()
            and "--max-watchers" in e.value.details()
        )
        watches[0].cancel()
        deadline = time.monotonic() + 5  # the slot frees once the server sees the cancel
        while True:
            try:
                assert next(client.WatchStatistics(pb.WatchRequest(session_id=sid))).frame_index == 0
                break
            except grpc.RpcError:
                assert time.monotonic() < deadline, "a cancelled watch kept its slot"
                time.sleep(0.2)
    finally:
        client.close()
        running.stop(0.5)


# -- item 8: the export streams in pieces; the CLI writes them ---------------------------------


def test_export_streams_in_bounded_pieces_and_the_cli_writes_the_files(
    tracker, client, tmp_path, monkeypatch
):
    monkeypatch.setattr(export, "DETECTIONS_PER_READ", 700)  # several reads from the store
    monkeypatch.setattr(export, "CHUNK_BYTES", 64 * 1024)  # several pieces of the larger files
    sid = client.OpenSession(SPEC).session_id
    assert all(a.accepted for a in client.stream(message(sid, i) for i in range(30)))
    pieces = list(client.ExportSession(pb.ExportRequest(session_id=sid)))
    assert max(len(p.data) for p in pieces) <= export.CHUNK_BYTES
    csv = [p for p in pieces if p.name == "detections.csv"]
    assert len(csv) >= 2 and [p.last for p in csv] == [False] * (len(csv) - 1) + [True]
    expected = tracker.engine.store.detections(sid).to_csv(index=False).encode()
    assert b"".join(p.data for p in csv) == expected
    assert sum(p.last for p in pieces) == len({p.name for p in pieces}) >= 14

    token = tmp_path / "token"
    token.write_text(TRACKER_TOKEN)
    out = tmp_path / "export"
    result = subprocess.run(
        [
            COMMAND,
            "export",
            sid,
            "--tracker",
            f"127.0.0.1:{tracker.port}",
            "--token-file",
            str(token),
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert (out / "detections.csv").read_bytes() == expected
    assert pd.read_parquet(out / "detections.parquet").to_csv(index=False).encode() == expected
    assert (out / "tracks.png").read_bytes().startswith(b"\x89PNG")
    assert "export" in result.stderr and "B/s" in result.stderr  # the progress bar
    assert sorted(Path(p).name for p in result.stdout.split()) == sorted(p.name for p in out.iterdir())

    missing = subprocess.run(
        [
            COMMAND,
            "export",
            str(uuid.uuid4()),
            "--tracker",
            f"127.0.0.1:{tracker.port}",
            "--token-file",
            str(token),
            "--out",
            str(tmp_path / "none"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert missing.returncode == 2 and "NOT_FOUND: unknown session_id" in missing.stderr


# -- item 9: a full disk ------------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path):
    """A 2 MiB tmpfs (needs root and mount rights; skipped otherwise)."""
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a 2 MiB tmpfs here ({done.stderr.decode().strip()}): needs root")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=True)


def _fill(folder: Path) -> Path:
    """Take every free byte of ``folder``'s file system."""
    filler = folder / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        while True:
            os.write(fd, b"\0" * 512)
    except OSError as e:
        assert e.errno == errno.ENOSPC
    finally:
        os.close(fd)
    return filler


def _wait_for(condition, seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline
        time.sleep(0.1)


def test_a_full_disk_is_reported_counted_and_fails_readiness(small_disk):
    running = serve_tracker(small_disk / "tracker.db")
    client = tracker_client(running)
    try:
        sid = client.OpenSession(SPEC).session_id
        assert all(a.accepted for a in client.stream(message(sid, i) for i in range(3)))
        filler = _fill(small_disk)
        (ack,) = client.stream([message(sid, 3)])
        assert not ack.accepted and "database or disk is full" in ack.error, ack.error
        assert "no space left" in ack.error and "rollback" not in ack.error
        not_serving = health_pb2.HealthCheckResponse.NOT_SERVING
        _wait_for(lambda: health(running, SERVICE_NAME) == not_serving)
        assert health(running) == health_pb2.HealthCheckResponse.SERVING  # alive: no restart wanted
        text = metrics_text(running)
        assert 'loopstream_tracker_store_errors_total{kind="full"} 1.0' in text
        assert 'loopstream_tracker_frames_rejected_total{reason="store"} 1.0' in text
        time.sleep(2.5)  # readiness stays down while the disk stays full
        assert health(running, SERVICE_NAME) == not_serving

        os.unlink(filler)
        _wait_for(lambda: health(running, SERVICE_NAME) == health_pb2.HealthCheckResponse.SERVING)
        acks = list(client.stream(message(sid, i) for i in range(3, 5)))
        assert [(a.accepted, a.duplicate) for a in acks] == [(True, False), (True, False)]
        assert client.GetSession(pb.SessionRef(session_id=sid)).frames_stored == 5
    finally:
        client.close()
        running.stop(0.5)


# -- item 10: a damaged store --------------------------------------------------------------------


def _damaged_store(path: Path) -> str:
    with Store(path) as store:
        engine = TrackerEngine(store)
        sid = engine.open_session({"pixel_size_nm": 0.5, "frame_rate_hz": 10.0})["session_id"]
        for i in range(20):
            loops = synthetic.detections(MIC, i)
            assert engine.ingest(FrameInput(sid, i, i / 10, "m", "1", 256, 256, loops)).accepted
    page = 4096
    size = path.stat().st_size
    with path.open("r+b") as f:  # an interior page in the middle of the detections
        f.seek((size // page // 2) * page)
        f.write(os.urandom(page))
    return sid


def test_a_damaged_store_is_refused_at_start_and_its_errors_are_statuses(tmp_path):
    path = tmp_path / "damaged.db"
    sid = _damaged_store(path)
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOOPSTREAM_TRACKER_")}
    result = subprocess.run(
        [COMMAND, "--db", str(path), "--no-auth", "--port", "0", "--metrics-port", "-1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2, result.stderr
    assert "is damaged (SQLite quick_check" in result.stderr and "--skip-integrity-check" in result.stderr

    running = serve_tracker(path, check_integrity=False)  # what --skip-integrity-check starts
    client = tracker_client(running)
    try:
        with pytest.raises(grpc.RpcError) as e:
            client.GetStatistics(pb.StatisticsRequest(session_id=sid))
        assert e.value.code() == grpc.StatusCode.DATA_LOSS, e.value.details()
        assert (
            "store file is damaged" in e.value.details() and "restore it from a backup" in e.value.details()
        )
        assert 'loopstream_tracker_store_errors_total{kind="corrupt"} 1.0' in metrics_text(running)
    finally:
        client.close()
        running.stop(0.5)


# -- item 11: a resend with other content --------------------------------------------------------


def test_a_resend_with_different_content_is_an_error(client):
    sid = client.OpenSession(SPEC).session_id
    sent = [message(sid, i) for i in range(4)]
    assert all(a.accepted for a in client.stream(sent))
    moved = message(sid, 2)
    moved.loops[5].x_px += 0.5
    later = message(sid, 2, timestamp_s=9.0)
    acks = list(client.stream([sent[2], moved, later]))
    assert [(a.accepted, a.duplicate) for a in acks] == [(True, True), (False, False), (False, False)]
    for ack in acks[1:]:
        assert "already stored with different content" in ack.error, ack.error
    stats = client.GetStatistics(pb.StatisticsRequest(session_id=sid))
    assert stats.frames[2].timestamp_s == pytest.approx(0.2)


# -- item 12: every loop field against the frame ------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value", "rule"),
    [
        ("score", 1.5, "probability"),
        ("score", -0.1, "probability"),
        ("angle_deg", 1e9, "degrees"),
        ("x_px", -1e30, "overlap the frame"),
        ("y_px", 1e30, "overlap the frame"),
        ("major_px", 1e9, "twice the frame diagonal"),
        ("minor_px", 1e3, "<= major_px"),
        ("area_px", 1e12, "frame's"),
        ("angle_deg", float("nan"), "degrees"),
        ("bbox.width_px", 0.0, "> 0"),
        ("bbox.x_px", 1e9, "box must overlap"),
    ],
)
def test_every_loop_field_is_checked_against_the_frame(client, field, value, rule):
    sid = client.OpenSession(SPEC).session_id
    bad = message(sid, 0)
    target = bad.loops[7].bbox if field.startswith("bbox.") else bad.loops[7]
    setattr(target, field.removeprefix("bbox."), value)
    acks = list(client.stream([bad, message(sid, 0)]))
    column = field.replace(".", "_")
    assert not acks[0].accepted and f"loop 7 has {column} = " in acks[0].error and rule in acks[0].error, (
        acks[0].error
    )
    assert acks[1].accepted  # the stream goes on; the corrected frame is stored
