"""Restarts never stall a microscope: real `loopstream-client` processes, a real tracker and
tritonserver stopped (SIGTERM) or killed (SIGKILL) mid-run, and the stored frames' commit times
(the store's ``received_unix_s``, stamped in the frame's own transaction).
"""

from __future__ import annotations

import os
import re
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
import zlib
from pathlib import Path

import grpc
import numpy as np
import pytest

from loopstream.client.sources import SimulatorSource
from loopstream.client.tracker_link import DetectionStream
from loopstream.core.detections import encode_loops
from loopstream.core.simulator import SimulationConfig
from loopstream.dev.stack import LocalStack
from loopstream.serving.pipelines import PipelineSpec
from loopstream.serving.triton import REPOSITORY
from loopstream.tracker.cli import config_from_args, parser
from loopstream.tracker.server import serve
from loopstream.v1 import tracker_pb2 as pb
from loopstream.v1 import tracker_pb2_grpc as pb_grpc
from tests.conftest import infer_detections, write_versions

SIZE = 256  # px: small frames keep four microscopes and a restarting Triton within the test's time


@pytest.fixture(scope="module")
def own_stack(tmp_path_factory: pytest.TempPathFactory):
    """A stack serving only loops_semantic version 1: tritonserver (re)starts in seconds, not minutes."""
    root = tmp_path_factory.mktemp("restarts")
    shipped = PipelineSpec.read(REPOSITORY / "loops_semantic" / "1" / "pipeline.json")
    with LocalStack(root / "stack", repository=write_versions(root, {1: shipped})) as stack:
        yield stack


class Microscope:
    """One real ``loopstream-client`` process streaming a simulated experiment (logs in the stack's
    work directory, readable while it runs)."""

    def __init__(
        self, stack: LocalStack, name: str, frames: int, fps: float, *flags: str, size: int = SIZE
    ) -> None:
        self.name, self.frames, self.seed = name, frames, zlib.crc32(name.encode()) % 1000
        argv = [
            sys.executable,
            "-m",
            "loopstream.client.cli",
            f"--triton={stack.triton_url}",
            f"--tracker={stack.tracker_url}",
            f"--microscope-id={name}",
            "--max-in-flight=2",
            "--no-progress",
            *flags,
            "simulate",
            f"--frames={frames}",
            f"--size={size}",
            f"--fps={fps}",
            f"--seed={self.seed}",
        ]
        env = dict(os.environ, LOOPSTREAM_TRACKER_TOKEN=stack.token)
        self.out_path, self.err_path = stack.workdir / f"{name}.out", stack.workdir / f"{name}.err"
        with self.out_path.open("w") as out, self.err_path.open("w") as err:
            self.process = subprocess.Popen(argv, env=env, stdout=out, stderr=err, text=True)
        self.exited_unix_s: float | None = None
        self._waiter = threading.Thread(target=self._wait, daemon=True)
        self._waiter.start()

    def _wait(self) -> None:
        self.process.wait()
        self.exited_unix_s = time.time()

    @property
    def out(self) -> str:
        return self.out_path.read_text()

    @property
    def err(self) -> str:
        return self.err_path.read_text()[-3000:]

    def join(self, timeout_s: float) -> int:
        self._waiter.join(timeout_s)
        if self._waiter.is_alive():
            self.process.kill()
            self._waiter.join(10)
            pytest.fail(f"{self.name} did not exit within {timeout_s:.0f} s; its log:\n{self.err}")
        return self.process.returncode

    @property
    def running(self) -> bool:
        return self.process.poll() is None


def _session(stack: LocalStack, microscope: str) -> dict | None:
    """The microscope's session row as stored (None before it is opened)."""
    with sqlite3.connect(stack.workdir / "tracker.db") as db:
        row = db.execute(
            "SELECT session_id, closed, model_version FROM sessions WHERE microscope_id = ?", (microscope,)
        ).fetchone()
    return None if row is None else {"session_id": row[0], "closed": row[1], "model_version": row[2]}


def _commits(stack: LocalStack, microscope: str) -> list[tuple[int, float, str]]:
    """(frame index, commit time, model version) of every stored frame of the microscope, by index."""
    with sqlite3.connect(stack.workdir / "tracker.db") as db:
        rows = db.execute(
            "SELECT frame_index, received_unix_s, f.model_version FROM frames f JOIN sessions s USING (sid) "
            "WHERE s.microscope_id = ? ORDER BY frame_index",
            (microscope,),
        ).fetchall()
    return [(int(i), float(t), v) for i, t, v in rows]


def _wait_for(condition, timeout_s: float, what: str) -> float:
    """Poll until ``condition()``; the wall time (unix s) it first held."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"not within {timeout_s:.0f} s: {what}"
        time.sleep(0.1)
    return time.time()


def _first_commit_after(stack: LocalStack, microscopes: list[str], since: float, within_s: float) -> float:
    """Every microscope has a frame committed within ``within_s`` of ``since`` (a service back);
    the longest of their delays."""
    delays = []
    for name in microscopes:
        try:
            _wait_for(
                lambda name=name: any(t > since for _, t, _ in _commits(stack, name)),
                within_s + 2,
                f"{name} stored a frame after the restart",
            )
        except AssertionError as e:
            recent = [round(t - since, 1) for _, t, _ in _commits(stack, name)][-5:]
            log = (stack.workdir / f"{name}.err").read_text()[-2000:]
            raise AssertionError(f"{e}; last commits (s after the restart): {recent}; log:\n{log}") from None
        first = min(t for _, t, _ in _commits(stack, name) if t > since)
        assert first - since <= within_s, f"{name}: storage resumed {first - since:.1f} s after the restart"
        delays.append(first - since)
    return max(delays)


def _assert_stored_once(stack: LocalStack, m: Microscope) -> None:
    indices = [i for i, _, _ in _commits(stack, m.name)]
    assert indices == list(range(m.frames)), f"{m.name} stored {indices}"


def test_a_graceful_tracker_restart_is_a_reconnect(own_stack: LocalStack) -> None:
    """SIGTERM ends the detections stream with status OK: the client reconnects, never hangs."""
    m = Microscope(own_stack, "graceful", frames=24, fps=4)
    _wait_for(lambda: len(_commits(own_stack, "graceful")) >= 4, 60, "the first frames stored")
    own_stack.stop_tracker()
    own_stack.start_tracker()
    assert m.join(60) == 0, m.err
    _assert_stored_once(own_stack, m)
    assert re.search(r"reconnects: Triton 0, tracker [1-9]", m.out), m.out


def test_after_a_tracker_crash_storage_resumes_while_the_run_goes_on(own_stack: LocalStack) -> None:
    """kill -9: the client reconnects in the background as soon as the tracker is back, not at close()."""
    m = Microscope(own_stack, "crash", frames=45, fps=3)
    _wait_for(lambda: len(_commits(own_stack, "crash")) >= 4, 60, "the first frames stored")
    own_stack.kill_tracker()
    time.sleep(2.0)  # frames keep going to Triton meanwhile
    own_stack.start_tracker()
    back = time.time()
    resumed_s = _first_commit_after(own_stack, ["crash"], back, within_s=5.0)
    print(f"storage resumed {resumed_s:.2f} s after the tracker was back from kill -9")
    assert m.running, "the client finished before storage resumed: it waited for close() to reconnect"
    assert m.join(60) == 0, m.err
    _assert_stored_once(own_stack, m)
    after = [i for i, t, _ in _commits(own_stack, "crash") if t > back]
    assert len(after) > 5, f"only frames {after} were stored after the restart"


def test_the_client_closes_its_session_with_the_pinned_version(own_stack: LocalStack) -> None:
    m = Microscope(own_stack, "closer", frames=3, fps=0)
    assert m.join(60) == 0, m.err
    session = _session(own_stack, "closer")
    assert session is not None and session["closed"] == 1, session
    versions = {v for _, _, v in _commits(own_stack, "closer")}
    assert versions == {session["model_version"]} and session["model_version"] != "", (session, versions)


def _message_sizes(stack: LocalStack, frames: int, seed: int) -> list[int]:
    """Bytes of each frame's FrameDetections as the client will build it (Triton's real answers)."""
    config = SimulationConfig(shape=(SIZE, SIZE), n_frames=frames)
    return [
        pb.FrameDetections(
            session_id=str(uuid.uuid4()),
            frame_index=frame.index,
            timestamp_s=frame.timestamp_s,
            model_name="loops_semantic",
            model_version="1",
            width_px=SIZE,
            height_px=SIZE,
            loops=encode_loops(infer_detections(stack.triton_url, "loops_semantic", frame.image, "1")),
            latency_s=0.5,
        ).ByteSize()
        for frame in SimulatorSource(config, seed)
    ]


def test_a_frame_over_the_clients_message_bound_fails_alone(own_stack: LocalStack) -> None:
    """A bound some frames' detections exceed: those fail with the reason, the others are stored."""
    name, frames = "bounded", 12
    sizes = _message_sizes(own_stack, frames, zlib.crc32(name.encode()) % 1000)
    limit = (min(sizes) + max(sizes)) // 2
    assert min(sizes) < limit < max(sizes), f"all frames' messages are {sizes[0]} bytes: change the seed"
    m = Microscope(own_stack, name, frames, 0, f"--tracker-max-message-bytes={limit}")
    assert m.join(60) == 3, m.err
    failed = re.findall(
        r"failed: tracker rejected frame (\d+): its detections message \((\d+) loops\) is (\d+) "
        rf"bytes, over the tracker's limit of {limit} bytes",
        m.err,
    )
    stored = [i for i, _, _ in _commits(own_stack, name)]
    assert failed and stored, (sizes, failed, stored, m.err)
    assert sorted(stored + [int(i) for i, _, _ in failed]) == list(range(frames))
    assert all(int(size) > limit for _, _, size in failed)
    assert all(sizes[i] <= limit for i in stored), (sizes, stored)
    summary = f"{frames} frames submitted, {frames} analysed, {len(stored)} stored, {len(failed)} failed"
    assert summary in m.out, m.out


# -- message limits against an in-process tracker (real gRPC server and SQLite file, no Triton) -----


@pytest.fixture
def small_tracker(tmp_path: Path):
    """A tracker configured from its own flags, with a 4 KiB message limit."""
    args = parser().parse_args(
        [
            "--port=0",
            "--metrics-port=-1",
            "--no-auth",
            f"--db={tmp_path / 'small.db'}",
            "--max-message-bytes=4096",
        ]
    )
    running = serve(config_from_args(args))
    yield running
    running.stop(1.0)


def _frame(session_id: str, index: int, loops: int) -> pb.FrameDetections:
    rng = np.random.default_rng(index)
    detections = np.column_stack(
        [
            rng.uniform(0.6, 0.9, loops),
            rng.uniform(20, 230, (loops, 2)),
            np.full((loops, 2), 8.0),
            np.zeros(loops),
            np.full(loops, 50.0),
            rng.uniform(10, 220, (loops, 2)),
            np.full((loops, 2), 16.0),
        ]
    )
    return pb.FrameDetections(
        session_id=session_id,
        frame_index=index,
        timestamp_s=float(index),
        model_name="loops_semantic",
        model_version="1",
        width_px=256,
        height_px=256,
        loops=encode_loops(detections),
    )


def _send_and_drain(stream: DetectionStream, frames: list[pb.FrameDetections], timeout_s: float = 20) -> None:
    for frame in frames:
        stream.send(frame)
    drainer = threading.Thread(target=stream.drain, daemon=True)
    drainer.start()
    drainer.join(timeout_s)
    assert not drainer.is_alive(), f"not drained after {timeout_s} s ({stream.reconnects} reconnects)"


@pytest.mark.parametrize("client_bound", [4096, 1 << 20], ids=["client-refuses", "tracker-refuses"])
def test_a_detections_message_over_the_limit_is_one_failed_frame(small_tracker, client_bound: int) -> None:
    url = f"127.0.0.1:{small_tracker.port}"
    with grpc.insecure_channel(url) as channel:
        stub = pb_grpc.TrackerStub(channel)
        sid = stub.OpenSession(
            pb.SessionSpec(microscope_id="m", pixel_size_nm=1.0, frame_rate_hz=1.0)
        ).session_id
        frames = [_frame(sid, 0, 5), _frame(sid, 1, 200), _frame(sid, 2, 5)]
        assert frames[1].ByteSize() > 4096 > frames[0].ByteSize()
        acks: list[pb.Ack] = []
        stream = DetectionStream(
            url, on_ack=acks.append, reconnect_timeout_s=10, max_message_bytes=client_bound
        )
        _send_and_drain(stream, frames)
        stream.close()
        stored = stub.GetSession(pb.SessionRef(session_id=sid))
    assert sorted((a.frame_index, a.accepted) for a in acks) == [(0, True), (1, False), (2, True)]
    (reason,) = [a.error for a in acks if not a.accepted]
    if client_bound == 4096:
        assert stream.reconnects == 0
        assert "over the tracker's limit of 4096 bytes" in reason and "--max-message-bytes" in reason, reason
    else:
        assert stream.reconnects == 1, "the frame the tracker refused was resent"
        assert "RESOURCE_EXHAUSTED" in reason and "4096" in reason, reason
    assert stored.frames_stored == 2 and stored.last_frame_index == 2
    assert [r.frame_index for r in stream.rejected] == [1]


# -- rolling restarts under load ----------------------------------------------------------------


@pytest.mark.slow
def test_rolling_restarts_under_load(own_stack: LocalStack) -> None:
    """4 microscopes; the tracker SIGTERMed and restarted twice, tritonserver kill -9ed once."""
    names = [f"rolling-{i}" for i in range(4)]
    # 128 px: four microscopes at 1 frame/s is what Triton keeps up with on 2 shared cores.
    microscopes = [Microscope(own_stack, name, frames=60, fps=1.0, size=128) for name in names]

    def every_session_stored(n: int):
        return lambda: all(len(_commits(own_stack, name)) >= n for name in names)

    _wait_for(every_session_stored(3), 90, "every microscope stored 3 frames")
    restarts = []
    for service in ("tracker", "triton", "tracker"):
        if service == "tracker":
            own_stack.stop_tracker()
            own_stack.start_tracker()
        else:
            own_stack.kill_triton()
            own_stack.start_triton()
        back = time.time()
        restarts.append((service, round(_first_commit_after(own_stack, names, back, within_s=10.0), 2)))
    print(f"storage resumed, slowest microscope, s after each restart: {restarts}")
    assert all(m.running for m in microscopes), "the run ended before the last restart: make it longer"
    for m in microscopes:
        assert m.join(120) == 0, m.err
        last_commit = max(t for _, t, _ in _commits(own_stack, m.name))
        assert m.exited_unix_s - last_commit <= 30, (
            f"{m.name} exited {m.exited_unix_s - last_commit:.1f} s late"
        )
        _assert_stored_once(own_stack, m)
        session = _session(own_stack, m.name)
        assert session["closed"] == 1
        assert re.search(r"reconnects: Triton [1-9]\d*, tracker [2-9]", m.out), m.out
