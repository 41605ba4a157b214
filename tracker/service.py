"""gRPC servicer: translates loopstream.v1 messages to engine calls and back, nothing more."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import inspect
import logging
import math
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import grpc
import pandas as pd

from loopstream.core.detections import message_loops
from loopstream.tracker import export
from loopstream.tracker.engine import TrackerEngine
from loopstream.tracker.ingest import IngestResult, rejected
from loopstream.tracker.previews import LatestPreviews
from loopstream.tracker.rollout import PolicyFile
from loopstream.tracker.sessions import SessionNotFound
from loopstream.tracker.store import store_error_kind, store_error_sentence
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
        dpa_per_ion_cm2=s["dpa_per_ion_cm2"],
        model_family=pb.ModelFamily.ValueType(s["model_family"]),
        search_range_nm=s["search_range_nm"],
        memory_frames=int(s["memory_frames"]),
        size_weight=s["size_weight"],
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
        reads_loop_table=True,
    )


# The fields FrameInput takes from FrameDetections as they are (same names, same units).
_FRAME_FIELDS = [f.name for f in dataclasses.fields(FrameInput) if f.name not in ("loops", "shadow")]


def frame_input(msg: pb.FrameDetections) -> FrameInput:
    """The domain view of one FrameDetections message: its loops decoded once, into one array.

    Raises ValueError (with what to do) when the loops cannot be read.
    """
    return FrameInput(
        **{name: getattr(msg, name) for name in _FRAME_FIELDS},
        loops=message_loops(msg),
        shadow=_shadow_input(msg.shadow) if msg.HasField("shadow") else None,
    )


def _shadow_input(msg: pb.ShadowAgreement) -> ShadowInput:
    return ShadowInput(msg.model_version, msg.candidate_loop_count, msg.matched, msg.f1, msg.latency_s)


def _rows(message_type, table: pd.DataFrame) -> list[dict]:
    """The scalar fields of one ``message_type`` per row of ``table``, from the columns of their
    names (the domain tables are named after the wire's fields, units included)."""
    fields = [f.name for f in message_type.DESCRIPTOR.fields if f.message_type is None]
    return table[fields].to_dict(orient="records")


def _summary_message(summary: dict) -> pb.SessionSummary:
    return pb.SessionSummary(
        **{k: v for k, v in summary.items() if not (isinstance(v, float) and math.isnan(v))}
    )


_STORE_STATUS = {
    "full": grpc.StatusCode.RESOURCE_EXHAUSTED,
    "io": grpc.StatusCode.UNAVAILABLE,
    "corrupt": grpc.StatusCode.DATA_LOSS,
    "busy": grpc.StatusCode.UNAVAILABLE,
    "other": grpc.StatusCode.INTERNAL,
}


def _status_codes(method):
    """Domain errors as gRPC status, each with a sentence: unknown session -> NOT_FOUND, bad
    argument -> INVALID_ARGUMENT, a store error -> its status by kind (``_STORE_STATUS``)."""

    def abort(self: TrackerService, context: grpc.ServicerContext, error: Exception) -> None:
        if isinstance(error, sqlite3.Error):
            kind = store_error_kind(error)
            log.error("store error", extra={"method": method.__name__, "kind": kind, "error": str(error)})
            if self.on_store_error is not None:
                self.on_store_error(kind)
            context.abort(_STORE_STATUS[kind], store_error_sentence(error))
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
            except (SessionNotFound, ValueError, sqlite3.Error) as e:
                abort(self, context, e)

        return streaming

    @functools.wraps(method)
    def unary(self, request, context):
        try:
            return method(self, request, context)
        except (SessionNotFound, ValueError, sqlite3.Error) as e:
            abort(self, context, e)

    return unary


def _in_slot(slots: str):
    """A streaming method that holds one of ``self.<slots>`` (a ``_Slots``) while it runs."""

    def decorate(method):
        @functools.wraps(method)
        def held(self, request, context):
            with getattr(self, slots).hold(context):
                yield from method(self, request, context)

        return held

    return decorate


@dataclass(frozen=True)
class StreamLimits:
    """How many long-lived streams of each kind may be open at once (each holds a worker thread)."""

    watchers: int = 256
    detection_streams: int = 64


class _Slots:
    """A counter of open streams of one kind, refusing one past its limit."""

    def __init__(self, kind: str, limit: int, flag: str) -> None:
        self.kind, self.limit, self.flag = kind, limit, flag
        self._open = 0
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def hold(self, context: grpc.ServicerContext) -> Iterator[None]:
        with self._lock:
            full = self._open >= self.limit
            if not full:
                self._open += 1
        if full:
            context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"{self.limit} {self.kind} are open, the tracker's limit ({self.flag}): close one, or "
                "retry later",
            )
        try:
            yield
        finally:
            with self._lock:
                self._open -= 1


class TrackerService(pb_grpc.TrackerServicer):
    def __init__(
        self,
        engine: TrackerEngine,
        on_frame: Callable[[IngestResult, pb.FrameDetections, float], None] | None = None,
        policy: PolicyFile | None = None,
        previews: LatestPreviews | None = None,
        on_store_error: Callable[[str], None] | None = None,
        limits: StreamLimits = StreamLimits(),
    ) -> None:
        self.engine = engine
        self.on_frame = on_frame  # metrics hook: (result, the frame's message, seconds from receipt to ack)
        self.policy = policy  # the A/B policy sessions are assigned by; None = the engine's defaults
        self.on_store_error = on_store_error  # metrics hook: the kind of a failed store operation
        self._watchers = _Slots("WatchStatistics streams", limits.watchers, "--max-watchers")
        self._streams = _Slots(
            "StreamDetections streams", limits.detection_streams, "--max-detection-streams"
        )
        self.previews = previews  # where a frame's preview goes (the web view); None = dropped

    @_status_codes
    def OpenSession(self, request: pb.SessionSpec, context: grpc.ServicerContext) -> pb.Session:
        return _session_message(self.engine.open_session({f.name: v for f, v in request.ListFields()}))

    @_status_codes
    def CloseSession(self, request: pb.SessionRef, context: grpc.ServicerContext) -> pb.Session:
        closed = _session_message(self.engine.close_session(request.session_id))
        if self.previews is not None:
            self.previews.discard(request.session_id)  # memory holds previews of open sessions only
        return closed

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

    @_in_slot("_streams")
    def StreamDetections(
        self, request_iterator: Iterator[pb.FrameDetections], context: grpc.ServicerContext
    ) -> Iterator[pb.Ack]:
        for msg in request_iterator:
            received = time.perf_counter()
            result = self._store(msg)
            if self.engine.closing and not result.accepted:
                # Refused only because we are stopping: no ack, so the client resends it to the
                # restarted tracker (an end of the stream it did not ask for is its cue to reconnect).
                return
            if (
                result.accepted
                and not result.duplicate
                and msg.HasField("preview")
                and self.previews is not None
            ):
                problem = self.previews.offer(msg.session_id, msg.frame_index, msg.preview)
                if problem:  # the detections are stored all the same: only the picture is lost
                    result = dataclasses.replace(result, error=f"frame stored, preview dropped: {problem}")
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

    def _store(self, msg: pb.FrameDetections) -> IngestResult:
        """Ingest one frame; whatever goes wrong fails this frame alone, with the reason."""
        try:
            frame = frame_input(msg)
        except ValueError as e:  # loops that cannot be read
            return rejected("invalid", f"{e}; resend frame {msg.frame_index}")
        try:
            return self.engine.ingest(frame)
        except sqlite3.Error as e:  # e.g. disk full: this frame fails, the stream and the session go on
            kind = store_error_kind(e)
            log.error(
                "frame not stored",
                extra={
                    "session_id": msg.session_id,
                    "frame_index": msg.frame_index,
                    "kind": kind,
                    "error": str(e),
                },
            )
            if self.on_store_error is not None:
                self.on_store_error(kind)
            return rejected("store", store_error_sentence(e))
        except Exception as e:  # a bug: this frame fails, the stream goes on
            log.exception(
                "frame not stored", extra={"session_id": msg.session_id, "frame_index": msg.frame_index}
            )
            return rejected("internal", f"internal error, frame not stored ({e}): resend it later")

    @_status_codes
    def GetStatistics(
        self, request: pb.StatisticsRequest, context: grpc.ServicerContext
    ) -> pb.StatisticsReply:
        to_frame = request.to_frame if request.to_frame > 0 else None
        frames, summary, window = self.engine.statistics(request.session_id, request.from_frame, to_frame)
        return pb.StatisticsReply(
            session_id=request.session_id,
            frames=[pb.FrameStatistics(**r) for r in _rows(pb.FrameStatistics, frames)],
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
    @_in_slot("_watchers")
    def WatchStatistics(
        self, request: pb.WatchRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.FrameStatistics]:
        self.engine.session(request.session_id)
        next_frame = request.from_frame
        while context.is_active():
            # Checked before reading: every frame stored before the close is still sent.
            ended = self.engine.session(request.session_id)["closed"] or self.engine.closing
            frames = self.engine.frames(request.session_id, next_frame)
            for row in _rows(pb.FrameStatistics, frames):
                yield pb.FrameStatistics(**row)
            if len(frames):
                next_frame = int(frames.frame_index.iloc[-1]) + 1
            if ended:
                return
            self.engine.wait_for_frame(request.session_id, next_frame - 1, WATCH_POLL_S)

    @_status_codes
    def GetTracks(self, request: pb.TracksRequest, context: grpc.ServicerContext) -> pb.TracksReply:
        tracks, points = self.engine.tracks_with_points(request.session_id, max(request.min_length, 1))
        points_of = {
            track_id: [pb.TrackPoint(**q) for q in _rows(pb.TrackPoint, group)]
            for track_id, group in points.groupby("track_id", sort=False)
        }
        return pb.TracksReply(
            session_id=request.session_id,
            tracks=[pb.Track(**t, points=points_of[t["track_id"]]) for t in _rows(pb.Track, tracks)],
        )

    @_status_codes
    def ExportSession(
        self, request: pb.ExportRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.ExportChunk]:
        for chunk in export.export_session(self.engine, request.session_id, request.join_fragments):
            yield pb.ExportChunk(session_id=request.session_id, **dataclasses.asdict(chunk))
