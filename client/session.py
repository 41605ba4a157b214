"""The client's Python API: one microscope session from frames to stored detections.

Facility software embeds this: open a session at the tracker (which says which model version
the session uses, or leaves it to the highest one Triton serves, pinned at open), submit frames
as the camera produces them, and close to get a report of what happened to every frame. Frames
go to Triton, their detections to the tracker; nothing here knows about models.

Example (with services running)::

    with MicroscopeSession(Endpoints("127.0.0.1:8001", "127.0.0.1:50061"), spec) as session:
        for frame in SimulatorSource(SimulationConfig(), n_frames=100):
            session.submit(frame)
    print(session.report)
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field

import grpc

from loopstream.client.backpressure import BackpressurePolicy, FrameGate
from loopstream.client.inference import FrameResult, InferenceStream, pinned_version
from loopstream.client.preview import DEFAULT_SIDE_PX, preview_message
from loopstream.client.shadow import ShadowJoin, agreement
from loopstream.client.sources import Frame
from loopstream.client.tracker_link import (
    DEFAULT_MAX_MESSAGE_BYTES,
    DetectionStream,
    auth_metadata,
    open_channel,
)
from loopstream.core.detections import put_loops, shadows_frame
from loopstream.v1 import tracker_pb2 as pb
from loopstream.v1 import tracker_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Endpoints:
    triton: str  # host:port of Triton's gRPC endpoint
    tracker: str  # host:port of the tracker
    token: str | None = None  # bearer token of the tracker
    max_in_flight: int = 8
    reconnect_timeout_s: float = 120.0
    policy: BackpressurePolicy = BackpressurePolicy.BLOCK  # when analysis falls behind the camera
    buffer_frames: int = 16  # drop-oldest: frames waiting beyond the in-flight window
    target_fps: float | None = None  # decimate: frames/s of acquisition time to analyse
    shared_memory: bool = False  # frames through system shared memory (client and Triton on one host)
    tracker_max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES  # the tracker's --max-message-bytes
    preview_every: int = 0  # send a preview for the web view with every N-th stored frame; 0 = never
    preview_px: int = DEFAULT_SIDE_PX  # its long side (the tracker keeps at most 512 px)


@dataclass
class SessionReport:
    session_id: str = ""
    model: str = ""
    frames_submitted: int = 0
    frames_analysed: int = 0
    frames_stored: int = 0
    failed: list[str] = field(default_factory=list)  # one message per frame that was not analysed/stored
    skipped: list[int] = field(default_factory=list)  # frames the backpressure policy left out
    resent_duplicates: int = 0
    loops: int = 0
    triton_reconnects: int = 0
    tracker_reconnects: int = 0
    session_closed: bool = False  # CloseSession done at the tracker
    shadowed: int = 0  # frames forwarded with a shadow candidate's agreement
    elapsed_s: float = 0.0
    latency_s: list[float] = field(default_factory=list)

    @property
    def frames_per_s(self) -> float:
        return self.frames_analysed / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def loops_per_frame(self) -> float:
        return self.loops / self.frames_analysed if self.frames_analysed else 0.0

    def summary(self) -> str:
        return (
            f"session {self.session_id} ({self.model}): {self.frames_submitted} frames submitted, "
            f"{self.frames_analysed} analysed, {self.frames_stored} stored, {len(self.failed)} failed, "
            f"{len(self.skipped)} skipped by the backpressure policy; "
            f"{self.loops_per_frame:.1f} loops/frame; {self.frames_per_s:.1f} frames/s; "
            f"reconnects: Triton {self.triton_reconnects}, tracker {self.tracker_reconnects}"
        )


class MicroscopeSession:
    """One open tracker session streaming through one Triton stream and one tracker stream.

    A session the tracker assigned a shadow candidate also sends the frames ``shadows_frame``
    picks to that version on a second Triton stream; each such frame is forwarded once both
    answers are in (or the candidate failed), with the agreement attached and the session's own
    detections unchanged.
    """

    def __init__(self, endpoints: Endpoints, spec: pb.SessionSpec) -> None:
        self.endpoints = endpoints
        self.report = SessionReport()
        self._lock = threading.Lock()
        self._frame_shapes: dict[int, tuple[int, int]] = {}
        self._forwarded = 0  # frames sent to the tracker: every preview_every-th carries a preview
        self.session = self._call_tracker("OpenSession", spec)
        self.report.session_id = self.session.session_id
        self.model_version = pinned_version(
            endpoints.triton,
            self.session.model_name,
            self.session.model_version,
            endpoints.reconnect_timeout_s,
        )
        self.report.model = f"{self.session.model_name}:{self.model_version}"
        self._tracker = DetectionStream(
            endpoints.tracker,
            endpoints.token,
            self._on_ack,
            endpoints.reconnect_timeout_s,
            max_message_bytes=endpoints.tracker_max_message_bytes,
        )
        self._triton = InferenceStream(
            endpoints.triton,
            self.session.model_name,
            self._on_result,
            model_version=self.model_version,
            max_in_flight=endpoints.max_in_flight,
            reconnect_timeout_s=endpoints.reconnect_timeout_s,
            shared_memory=endpoints.shared_memory,
            pixel_nm=self.session.spec.pixel_size_nm,
        )
        self._join = ShadowJoin(self._forward)
        self._candidate: InferenceStream | None = None
        if self.session.shadow_model_version:
            self._candidate = InferenceStream(
                endpoints.triton,
                self.session.model_name,
                self._on_candidate_result,
                model_version=self.session.shadow_model_version,
                max_in_flight=endpoints.max_in_flight,
                reconnect_timeout_s=endpoints.reconnect_timeout_s,
                pixel_nm=self.session.spec.pixel_size_nm,
            )
        self._gate = FrameGate(self._analyse, endpoints.policy, endpoints.buffer_frames, endpoints.target_fps)
        self._started = time.monotonic()

    def submit(self, frame: Frame) -> None:
        """Hand one frame over for analysis; with the block policy, waits while the window is full.

        Raises ConnectionError once a service stayed away longer than ``reconnect_timeout_s``.
        """
        self._tracker.raise_if_failed()
        with self._lock:
            self.report.frames_submitted += 1
        self._gate.offer(frame)

    @property
    def lag_frames(self) -> int:
        """Frames handed over but not yet stored, failed or skipped: how far analysis trails the camera."""
        r = self.report
        return r.frames_submitted - r.frames_stored - len(r.failed) - len(self._gate.skipped)

    def close(self) -> SessionReport:
        """Wait for every frame to be analysed and stored, close the streams, then the session.

        CloseSession tells the tracker that no more frames come (live watchers end, the session is
        listed as closed); a session that could not drain is left open.
        """
        try:
            try:
                self._gate.close()
                self._triton.close()
            finally:
                self._close_candidate()
        finally:
            self._tracker.close()
        self.report.skipped = list(self._gate.skipped)
        self.report.elapsed_s = time.monotonic() - self._started
        self.report.triton_reconnects = self._triton.reconnects
        self.report.tracker_reconnects = self._tracker.reconnects
        self._call_tracker("CloseSession", pb.SessionRef(session_id=self.session.session_id))
        self.report.session_closed = True
        return self.report

    def _call_tracker(self, method: str, request):
        """One unary call to the tracker on a channel of its own (the stream has its own)."""
        channel = open_channel(self.endpoints.tracker)
        try:
            return getattr(pb_grpc.TrackerStub(channel), method)(
                request, metadata=auth_metadata(self.endpoints.token), timeout=30
            )
        except grpc.RpcError as exc:
            raise ConnectionError(
                f"the tracker at {self.endpoints.tracker} refused {method}: {exc.details()}"
            ) from exc
        finally:
            channel.close()

    def _analyse(self, frame: Frame) -> None:
        """Send a frame to the session's version, and to the candidate if this frame shadows."""
        candidate = self._candidate
        shadowed = candidate is not None and shadows_frame(
            self.session.session_id, frame.index, self.session.shadow_fraction
        )
        self._join.expect(frame.index, shadowed)
        self._triton.submit(frame)
        if shadowed and candidate is not None:
            try:
                candidate.submit(frame)
            except Exception:  # the candidate stream is gone: the session goes on without shadow
                log.exception("shadow candidate %s failed; shadowing stops", candidate.model_version)
                self._stop_shadowing()

    def _on_result(self, result: FrameResult) -> None:
        self._join.session_answered(result)

    def _on_candidate_result(self, result: FrameResult) -> None:
        if result.error is not None:
            log.warning("shadow candidate failed on frame %d: %s", result.frame.index, result.error)
        self._join.candidate_answered(result.frame.index, None if result.error else result)

    def _forward(self, result: FrameResult, candidate: FrameResult | None) -> None:
        """Forward one frame to the tracker: ShadowJoin calls this once per frame, in frame order."""
        if result.error is not None:
            with self._lock:
                self.report.failed.append(result.error)
            return
        frame, detections = result.frame, result.detections
        assert detections is not None  # an answer without an error carries its detections
        with self._lock:
            self.report.frames_analysed += 1
            self.report.loops += len(detections)
            self.report.latency_s.append(result.latency_s)
        h, w = frame.image.shape[-2:]
        message = pb.FrameDetections(
            session_id=self.session.session_id,
            frame_index=frame.index,
            timestamp_s=frame.timestamp_s,
            model_name=self.session.model_name,
            model_version=self.model_version,
            width_px=w,
            height_px=h,
            latency_s=result.latency_s,
        )
        # One table of the loops; Loop messages only to a tracker older than the table.
        put_loops(message, detections, table=self.session.reads_loop_table)
        every = self.endpoints.preview_every
        if every > 0 and self._forwarded % every == 0:
            message.preview.CopyFrom(preview_message(frame.image, self.endpoints.preview_px))
        self._forwarded += 1
        if candidate is not None:
            with self._lock:
                self.report.shadowed += 1
            agreed = agreement(detections, candidate.detections)
            message.shadow.CopyFrom(
                pb.ShadowAgreement(
                    model_version=self.session.shadow_model_version,
                    candidate_loop_count=agreed.candidate_count,
                    matched=agreed.matched,
                    f1=agreed.f1,
                    latency_s=candidate.latency_s,
                )
            )
        self._tracker.send(message)

    def _stop_shadowing(self) -> None:
        self._candidate = None
        self._join.abandon_candidates()

    def _close_candidate(self) -> None:
        """Drain the candidate stream; if it cannot, forward its frames without agreement."""
        candidate = self._candidate
        if candidate is None:
            return
        try:
            candidate.close()
        except Exception:
            log.exception("shadow candidate %s failed while draining", candidate.model_version)
        self._stop_shadowing()

    def _on_ack(self, ack: pb.Ack) -> None:
        with self._lock:
            if ack.accepted:
                # A duplicate was stored before a reconnect lost its first acknowledgement.
                self.report.frames_stored += 1
                self.report.resent_duplicates += int(ack.duplicate)
                if ack.error:  # stored, with a remark (e.g. a preview out of bounds was dropped)
                    log.warning("tracker on frame %d: %s", ack.frame_index, ack.error)
            else:
                self.report.failed.append(f"tracker rejected frame {ack.frame_index}: {ack.error}")

    def __enter__(self) -> MicroscopeSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
