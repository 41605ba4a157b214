"""gRPC servicer: translates loopstream.v1 messages to engine calls and back, nothing more."""

from __future__ import annotations

import functools
import inspect
import logging
import math
import time
from collections.abc import Callable, Iterator

import grpc
import pandas as pd

from loopstream.core.detections import LOOP_COLUMNS, decode_loops
from loopstream.tracker import export
from loopstream.tracker.engine import IngestResult, SessionNotFound, TrackerEngine
from loopstream.tracker.rollout import PolicyFile
from loopstream.tracker.validation import FrameInput, ShadowInput
from loopstream.v1 import tracker_pb2 as pb
from loopstream.v1 import tracker_pb2_grpc as pb_grpc

WATCH_POLL_S = 1.0  # how often a live watch re-checks that its client is still there
log = logging.getLogger("loopstream.tracker")


def _session_message(s: dict) -> pb.Session:
    spec = pb.SessionSpec(
        microscope_id=s["microscope_id"],
        sample=s["sample"],
        pixel_size_nm=s["pixel_size_nm"],
        frame_rate_hz=s["frame_rate_hz"],
        dose_rate_ions_cm2_s=s["dose_rate_ions_cm2_s"],
        model_family=int(s["model_family"]),
        search_range_nm=s["search_range_nm"],
        memory_frames=int(s["memory_frames"]),
    )
    return pb.Session(
        session_id=s["session_id"],
        spec=spec,
        model_name=s["model_name"],
        model_version=s["model_version"],
        opened_at_unix_s=s["opened_at_unix_s"],
        closed=bool(s["closed"]),
        frames_stored=s["frames_stored"],
        last_frame_index=s["last_frame_index"],
        search_range_nm=s["search_range_nm"],
        memory_frames=int(s["memory_frames"]),
        shadow_model_version=s["shadow_model_version"],
        shadow_fraction=s["shadow_fraction"],
    )


def frame_input(msg: pb.FrameDetections) -> FrameInput:
    """The domain view of one FrameDetections message."""
    return FrameInput(
        session_id=msg.session_id,
        frame_index=msg.frame_index,
        timestamp_s=msg.timestamp_s,
        model_name=msg.model_name,
        model_version=msg.model_version,
        width_px=msg.width_px,
        height_px=msg.height_px,
        loops=pd.DataFrame(decode_loops(msg.loops), columns=LOOP_COLUMNS),
        latency_s=msg.latency_s,
        shadow=_shadow_input(msg.shadow) if msg.HasField("shadow") else None,
    )


def _shadow_input(msg: pb.ShadowAgreement) -> ShadowInput:
    return ShadowInput(msg.model_version, msg.candidate_loop_count, msg.matched, msg.f1, msg.latency_s)


def _frame_statistics(row) -> pb.FrameStatistics:
    return pb.FrameStatistics(
        frame_index=int(row.frame_index),
        timestamp_s=row.timestamp_s,
        fluence_ions_cm2=row.fluence_ions_cm2,
        loop_count=int(row.loop_count),
        density_per_um2=row.density_per_um2,
        mean_major_nm=row.mean_major_nm,
        mean_minor_nm=row.mean_minor_nm,
        foreground_percent=row.foreground_percent,
        drift_x_px=row.drift_x_px,
        drift_y_px=row.drift_y_px,
        drift_x_nm=row.drift_x_nm,
        drift_y_nm=row.drift_y_nm,
        linked_count=int(row.linked_count),
    )


def _summary_message(summary: dict) -> pb.SessionSummary:
    return pb.SessionSummary(
        **{k: v for k, v in summary.items() if not (isinstance(v, float) and math.isnan(v))}
    )


def _status_codes(method):
    """Domain errors as gRPC status: unknown session -> NOT_FOUND, bad argument -> INVALID_ARGUMENT."""

    def abort(context: grpc.ServicerContext, error: Exception) -> None:
        code = (
            grpc.StatusCode.NOT_FOUND
            if isinstance(error, SessionNotFound)
            else grpc.StatusCode.INVALID_ARGUMENT
        )
        context.abort(code, str(error))

    if inspect.isgeneratorfunction(method):

        @functools.wraps(method)
        def streaming(self, request, context):
            try:
                yield from method(self, request, context)
            except (SessionNotFound, ValueError) as e:
                abort(context, e)

        return streaming

    @functools.wraps(method)
    def unary(self, request, context):
        try:
            return method(self, request, context)
        except (SessionNotFound, ValueError) as e:
            abort(context, e)

    return unary


class TrackerService(pb_grpc.TrackerServicer):
    def __init__(
        self,
        engine: TrackerEngine,
        on_frame: Callable[[IngestResult, pb.FrameDetections, float], None] | None = None,
        policy: PolicyFile | None = None,
    ) -> None:
        self.engine = engine
        self.on_frame = on_frame  # metrics hook: (result, the frame's message, seconds from receipt to ack)
        self.policy = policy  # the A/B policy sessions are assigned by; None = the engine's defaults

    @_status_codes
    def OpenSession(self, request: pb.SessionSpec, context: grpc.ServicerContext) -> pb.Session:
        return _session_message(self.engine.open_session({f.name: v for f, v in request.ListFields()}))

    @_status_codes
    def CloseSession(self, request: pb.SessionRef, context: grpc.ServicerContext) -> pb.Session:
        return _session_message(self.engine.close_session(request.session_id))

    @_status_codes
    def GetSession(self, request: pb.SessionRef, context: grpc.ServicerContext) -> pb.Session:
        return _session_message(self.engine.session(request.session_id))

    @_status_codes
    def ListSessions(
        self, request: pb.ListSessionsRequest, context: grpc.ServicerContext
    ) -> pb.ListSessionsReply:
        return pb.ListSessionsReply(
            sessions=[_session_message(s) for s in self.engine.sessions(request.include_closed)]
        )

    def StreamDetections(
        self, request_iterator: Iterator[pb.FrameDetections], context: grpc.ServicerContext
    ) -> Iterator[pb.Ack]:
        for msg in request_iterator:
            received = time.perf_counter()
            try:
                result = self.engine.ingest(frame_input(msg))
            except Exception as e:  # e.g. disk full: this frame fails, the stream and the session go on
                log.exception(
                    "frame not stored", extra={"session_id": msg.session_id, "frame_index": msg.frame_index}
                )
                result = IngestResult(False, error=f"internal error, frame not stored ({e}): resend it later")
            if self.on_frame is not None:
                self.on_frame(result, msg, time.perf_counter() - received)
            yield pb.Ack(
                session_id=msg.session_id,
                frame_index=msg.frame_index,
                accepted=result.accepted,
                duplicate=result.duplicate,
                error=result.error,
            )
            if self.engine.closing:
                return  # end the stream now, so a stopping server need not wait out its grace period

    @_status_codes
    def GetStatistics(
        self, request: pb.StatisticsRequest, context: grpc.ServicerContext
    ) -> pb.StatisticsReply:
        to_frame = request.to_frame if request.to_frame > 0 else None
        frames, summary, window = self.engine.statistics(request.session_id, request.from_frame, to_frame)
        return pb.StatisticsReply(
            session_id=request.session_id,
            frames=[_frame_statistics(r) for r in frames.itertuples(index=False)],
            summary=_summary_message(summary),
            window=_summary_message(window),
        )

    @_status_codes
    def GetArmStatistics(
        self, request: pb.ArmStatisticsRequest, context: grpc.ServicerContext
    ) -> pb.ArmStatisticsReply:
        table = self.engine.arm_statistics(request.pipeline, request.since_unix_s)
        return pb.ArmStatisticsReply(
            arms=[pb.ArmStatistics(**row) for row in table.to_dict(orient="records")]
        )

    def GetPolicy(self, request: pb.PolicyRequest, context: grpc.ServicerContext) -> pb.PolicyReply:
        if self.policy is None:
            return pb.PolicyReply()
        policy = self.policy.current()  # re-reads a changed file, exactly as OpenSession would
        return pb.PolicyReply(policy_json=policy.to_json(), loaded_at_unix_s=self.policy.loaded_at_unix_s)

    @_status_codes
    def WatchStatistics(
        self, request: pb.WatchRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.FrameStatistics]:
        self.engine.session(request.session_id)
        next_frame = request.from_frame
        while context.is_active():
            # Checked before reading: every frame stored before the close is still sent.
            ended = self.engine.session(request.session_id)["closed"] or self.engine.closing
            frames = self.engine.frames(request.session_id, next_frame)
            for row in frames.itertuples(index=False):
                yield _frame_statistics(row)
            if len(frames):
                next_frame = int(frames.frame_index.iloc[-1]) + 1
            if ended:
                return
            self.engine.wait_for_frame(request.session_id, next_frame - 1, WATCH_POLL_S)

    @_status_codes
    def GetTracks(self, request: pb.TracksRequest, context: grpc.ServicerContext) -> pb.TracksReply:
        session = self.engine.session(request.session_id)
        tracks = self.engine.tracks(request.session_id, max(request.min_length, 1))
        points = self.engine.track_points(request.session_id, tracks.track_id.tolist())
        pixel_nm = session["pixel_size_nm"]
        by_track = dict(iter(points.groupby("track_id", sort=False)))
        reply = pb.TracksReply(session_id=request.session_id)
        for t in tracks.itertuples(index=False):
            p = by_track[t.track_id]
            reply.tracks.append(
                pb.Track(
                    track_id=int(t.track_id),
                    birth_frame=int(t.birth_frame),
                    death_frame=int(t.death_frame),
                    growth_rate_nm_s=t.growth_rate_nm_s,
                    lifetime_s=t.lifetime_s,
                    displacement_nm=t.displacement_nm,
                    length=int(t.length),
                    points=[
                        pb.TrackPoint(
                            frame_index=int(q.frame_index),
                            x_px=q.x_px,
                            y_px=q.y_px,
                            major_nm=q.major_px * pixel_nm,
                            minor_nm=q.minor_px * pixel_nm,
                            timestamp_s=q.timestamp_s,
                            x_corrected_px=q.x_corrected_px,
                            y_corrected_px=q.y_corrected_px,
                        )
                        for q in p.itertuples(index=False)
                    ],
                )
            )
        return reply

    @_status_codes
    def ExportSession(self, request: pb.ExportRequest, context: grpc.ServicerContext) -> pb.ExportReply:
        files = export.export_session(self.engine, request.session_id)
        return pb.ExportReply(
            session_id=request.session_id,
            files=[pb.ExportedFile(name=f.name, media_type=f.media_type, content=f.content) for f in files],
        )
