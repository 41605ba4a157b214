"""Sessions and the per-frame pipeline: validate -> link -> drift -> statistics -> commit.

The engine is the domain API the gRPC service translates to. Live per-session state (linker,
drift) is a cache of what the store holds: it is built lazily from the store on a session's first
frame after a start, and thrown away if a commit fails, so memory and store never disagree.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from loopstream.tracker import statistics
from loopstream.tracker.drift import DriftEstimator, predicted_drift
from loopstream.tracker.linking import SessionLinker
from loopstream.tracker.rollout import Assignment
from loopstream.tracker.store import NEXT_TRACK_COLUMN, Store
from loopstream.tracker.validation import LOOP_COLUMNS, FrameInput, ShadowInput, frame_problem

log = logging.getLogger("loopstream.tracker")


class SessionNotFound(KeyError):
    def __str__(self) -> str:
        return (
            f"unknown session_id {self.args[0]!r}: open a session with OpenSession and use the "
            "session_id it returns (ListSessions shows the open ones)"
        )


@dataclass(frozen=True)
class Defaults:
    model_name: str = "loops_semantic"  # for sessions that name no model family
    model_version: str = ""  # "" = Triton's latest
    search_range_nm: float = 8.0
    memory_frames: int = 3
    # The pipeline of each SessionSpec.model_family (1 instance: bright field; 2 semantic: dark field).
    family_models: tuple[tuple[int, str], ...] = ((1, "loops_instance"), (2, "loops_semantic"))


@dataclass(frozen=True)
class IngestResult:
    accepted: bool
    duplicate: bool = False
    error: str = ""
    microscope_id: str = ""  # of the session, when known (metrics labels)


@dataclass
class _Live:
    """In-memory state of one session, rebuilt from the store when missing."""

    spec: dict
    linker: SessionLinker
    drift: DriftEstimator
    frames_stored: int
    last_frame_index: int
    lock: threading.Lock = field(default_factory=threading.Lock)


class TrackerEngine:
    def __init__(
        self,
        store: Store,
        defaults: Defaults | None = None,
        on_commit: Callable[[float], None] | None = None,
        assign: Callable[[str], Assignment] | None = None,
    ) -> None:
        self.store = store
        self.defaults = defaults or Defaults()
        self.assign = assign  # session id -> its arm (and shadow), e.g. from an A/B policy
        self.on_commit = on_commit  # metrics hook: seconds one frame's transaction took
        self._live: dict[str, _Live] = {}
        self._live_lock = threading.Lock()
        self._new_frame = threading.Condition()
        self._closing = False

    # -- sessions ---------------------------------------------------------------------------

    def open_session(self, spec: dict) -> dict:
        """Store a new session. ``spec`` has the SessionSpec fields; returns the session record."""
        problem = _spec_problem(spec)
        if problem:
            raise ValueError(problem)
        d = self.defaults
        memory = spec.get("memory_frames", 0)
        session_id = str(uuid.uuid4())
        arm = self._assignment(session_id, int(spec.get("model_family", 0)))
        session = {
            "session_id": session_id,
            "microscope_id": spec.get("microscope_id", ""),
            "sample": spec.get("sample", ""),
            "pixel_size_nm": float(spec["pixel_size_nm"]),
            "frame_rate_hz": float(spec["frame_rate_hz"]),
            "dose_rate_ions_cm2_s": float(spec.get("dose_rate_ions_cm2_s", 0.0)),
            "model_family": int(spec.get("model_family", 0)),
            "model_name": arm.model_name,
            "model_version": arm.model_version,  # the arm: stored once, never updated
            "search_range_nm": float(spec.get("search_range_nm") or d.search_range_nm),
            "memory_frames": d.memory_frames if memory == 0 else max(int(memory), 0),
            "opened_at_unix_s": time.time(),
            "closed": 0,
            "shadow_model_version": arm.shadow_version,
            "shadow_fraction": arm.shadow_fraction,
        }
        self.store.add_session(session)
        log.info(
            "session opened", extra={k: session[k] for k in ("session_id", "microscope_id", "model_version")}
        )
        return self.session(session["session_id"])

    def _assignment(self, session_id: str, family: int) -> Assignment:
        """The pipeline (and A/B arm) of a new session: the family's pipeline, at the arm the policy
        assigns when the policy is about that pipeline, else at its latest version."""
        d = self.defaults
        default = Assignment(d.model_name, d.model_version)
        arm = self.assign(session_id) if self.assign else default
        pipeline = dict(d.family_models).get(family)
        if pipeline is None or pipeline == arm.model_name:
            return arm
        return default if pipeline == d.model_name else Assignment(pipeline, "")

    def session(self, session_id: str) -> dict:
        """The session record with its progress (frames_stored, last_frame_index)."""
        record = self.store.session(session_id)
        if record is None:
            raise SessionNotFound(session_id)
        progress = self.store.progress(session_id)
        return {
            **record,
            "frames_stored": progress.frames_stored,
            "last_frame_index": progress.last_frame_index,
        }

    def sessions(self, include_closed: bool) -> list[dict]:
        return [self.session(s) for s in self.store.sessions(include_closed).session_id]

    def close_session(self, session_id: str) -> dict:
        self.session(session_id)
        with self._live_lock:
            live = self._live.get(session_id)
        if live is None:
            self.store.close_session(session_id)
        else:
            with live.lock:  # after a commit in flight, before any further frame
                self.store.close_session(session_id)
                live.spec["closed"] = 1
        with self._live_lock:  # a state rebuilt meanwhile may have read the session still open
            stale = self._live.pop(session_id, None)
        if stale is not None and stale is not live:
            with stale.lock:
                stale.spec["closed"] = 1
        log.info("session closed", extra={"session_id": session_id})
        with self._new_frame:
            self._new_frame.notify_all()
        return self.session(session_id)

    def open_sessions(self) -> int:
        return len(self.store.sessions(include_closed=False))

    # -- ingest -----------------------------------------------------------------------------

    def shutdown(self) -> None:
        """Refuse new frames from now on; commits in flight finish (they hold their session lock)."""
        self._closing = True
        with self._new_frame:
            self._new_frame.notify_all()

    def ingest(self, frame: FrameInput) -> IngestResult:
        """Link, measure and durably store one frame; idempotent by (session, frame index)."""
        if self._closing:
            return IngestResult(False, error="tracker is shutting down: resend this frame after it restarts")
        try:
            live = self._live_session(frame.session_id)
        except SessionNotFound as e:
            return IngestResult(False, error=str(e))
        microscope = live.spec["microscope_id"]
        if live.spec["closed"]:
            return IngestResult(False, error=f"session {frame.session_id} is closed: open a new session")
        problem = frame_problem(frame)
        if problem:
            return IngestResult(False, error=problem, microscope_id=microscope)
        with live.lock:
            if frame.frame_index <= live.last_frame_index:
                if self.store.has_frame(frame.session_id, frame.frame_index):
                    return IngestResult(True, duplicate=True, microscope_id=microscope)
                return IngestResult(
                    False,
                    microscope_id=microscope,
                    error=(
                        f"frame_index {frame.frame_index} goes backwards: session {frame.session_id} has "
                        f"stored up to frame {live.last_frame_index} and frames must arrive in increasing "
                        "order; send only frames after the last acknowledged one"
                    ),
                )
            try:
                row, detections = self._process(live, frame)
                started = time.perf_counter()
                self.store.commit_frame(frame.session_id, row, detections)
                if self.on_commit is not None:
                    self.on_commit(time.perf_counter() - started)
            except BaseException:
                with self._live_lock:  # linker/drift moved on but nothing was stored: rebuild
                    self._live.pop(frame.session_id, None)
                raise
            live.frames_stored += 1
            live.last_frame_index = frame.frame_index
        with self._new_frame:
            self._new_frame.notify_all()
        return IngestResult(True, microscope_id=microscope)

    def _process(self, live: _Live, frame: FrameInput) -> tuple[dict, np.ndarray]:
        """The frame's stored row (statistics included) and its detections (store columns)."""
        spec, values = live.spec, _loop_values(frame.loops)
        ordinal = live.frames_stored
        x, y = values[:, LOOP_COLUMNS.index("x_px")], values[:, LOOP_COLUMNS.index("y_px")]
        pred_x, pred_y = live.drift.predict()
        known_below = live.linker.next_track_id
        track_ids = live.linker.link(np.column_stack([x - pred_x, y - pred_y]), ordinal)
        dx, dy = live.drift.update(track_ids, x, y, ordinal)
        n = len(values)
        detections = np.column_stack(
            [
                np.full(n, frame.frame_index),
                np.arange(n),
                track_ids,
                values,
                x - dx,
                y - dy,
                live.drift.homes_of(track_ids),
            ]
        )
        pixel_nm = spec["pixel_size_nm"]
        row = {
            "frame_index": frame.frame_index,
            "ordinal": ordinal,
            "timestamp_s": frame.timestamp_s,
            "width_px": frame.width_px,
            "height_px": frame.height_px,
            "model_name": frame.model_name,
            "model_version": frame.model_version,
            "linked_count": int(np.sum(track_ids < known_below)),
            "drift_x_px": dx,
            "drift_y_px": dy,
            "drift_x_nm": dx * pixel_nm,
            "drift_y_nm": dy * pixel_nm,
            NEXT_TRACK_COLUMN: live.linker.next_track_id,
            "received_unix_s": time.time(),
            "latency_s": frame.latency_s or None,  # 0 = not measured
            **_shadow_columns(frame.shadow),
            **statistics.frame_statistics(
                values[:, LOOP_COLUMNS.index("major_px")],
                values[:, LOOP_COLUMNS.index("minor_px")],
                frame.width_px,
                frame.height_px,
                pixel_nm,
                frame.timestamp_s,
                spec["dose_rate_ions_cm2_s"],
            ),
        }
        return row, detections

    def _live_session(self, session_id: str) -> _Live:
        with self._live_lock:
            live = self._live.get(session_id)
            if live is None:
                live = self._live[session_id] = self._rebuild(session_id)
            return live

    def _rebuild(self, session_id: str) -> _Live:
        """Live state from the store: linker and drift exactly as after the last stored frame."""
        spec = self.store.session(session_id)
        if spec is None:
            raise SessionNotFound(session_id)
        memory = int(spec["memory_frames"])
        linker = SessionLinker(spec["search_range_nm"] / spec["pixel_size_nm"], memory)
        drift = DriftEstimator(memory)
        progress = self.store.progress(session_id)
        live = _Live(spec, linker, drift, progress.frames_stored, progress.last_frame_index)
        if progress.frames_stored == 0:
            return live
        # Two frames more than the linker keeps: the drift predictions it linked those with.
        frames = self.store.last_frames(session_id, memory + 3)
        drifts = {
            int(o): (x, y)
            for o, x, y in zip(frames.ordinal, frames.drift_x_px, frames.drift_y_px, strict=True)
        }

        def drift_at(ordinal: int) -> tuple[float, float]:
            return drifts.get(ordinal, (0.0, 0.0))  # zero before the first frame

        kept = frames.iloc[-(memory + 1) :]
        recent = self.store.detections(session_id, int(kept.frame_index.iloc[0]))
        recent = recent.merge(kept[["frame_index", "ordinal"]], on="frame_index")
        pred = np.array([predicted_drift(drift_at(o - 1), drift_at(o - 2)) for o in recent.ordinal.tolist()])
        pred = pred.reshape(-1, 2)
        recent = recent.assign(x_link_px=recent.x_px - pred[:, 0], y_link_px=recent.y_px - pred[:, 1])
        linker.next_track_id = int(kept[NEXT_TRACK_COLUMN].iloc[-1])
        linker.restore(recent, [int(o) for o in kept.ordinal])
        log.info(
            "session recovered from the store",
            extra={
                "session_id": session_id,
                "frames": progress.frames_stored,
                "last_frame": progress.last_frame_index,
            },
        )
        last = int(kept.ordinal.iloc[-1])
        drift.restore(drift_at(last), drift_at(last - 1), recent.drop_duplicates("track_id", keep="last"))
        return live

    # -- queries ----------------------------------------------------------------------------

    def statistics(
        self, session_id: str, from_frame: int = 0, to_frame: int | None = None
    ) -> tuple[pd.DataFrame, dict, dict]:
        """Per-frame statistics in [from_frame, to_frame], the session's summary and the window's.

        The window's summary sees only the window: a track's lifetime there is the part inside it.
        """
        pixel_nm = self.session(session_id)["pixel_size_nm"]
        frames = self.store.frames(session_id)
        detections = self.store.detections(session_id)
        summary = statistics.session_summary(
            frames, statistics.tracks_table(detections, frames, pixel_nm), pixel_nm
        )
        upper = np.inf if to_frame is None else to_frame
        in_frames = frames[(frames.frame_index >= from_frame) & (frames.frame_index <= upper)].reset_index(
            drop=True
        )
        in_detections = detections[(detections.frame_index >= from_frame) & (detections.frame_index <= upper)]
        in_tracks = statistics.tracks_table(in_detections, in_frames, pixel_nm)
        return in_frames, summary, statistics.session_summary(in_frames, in_tracks, pixel_nm)

    def arm_statistics(self, pipeline: str = "", since_unix_s: float = 0.0) -> pd.DataFrame:
        """Per-arm statistics (``statistics.ARM_STATISTICS``) of the sessions opened since then."""
        return statistics.arm_statistics(self.store.arm_frames(pipeline, since_unix_s))

    def tracks(self, session_id: str, min_length: int = 1) -> pd.DataFrame:
        spec = self.session(session_id)
        detections = self.store.detections(session_id)
        table = statistics.tracks_table(detections, self.store.frames(session_id), spec["pixel_size_nm"])
        return table[table.length >= min_length].reset_index(drop=True)

    def frames(self, session_id: str, from_frame: int = 0) -> pd.DataFrame:
        """Stored per-frame statistics from ``from_frame`` on."""
        return self.store.frames(session_id, from_frame)

    def track_points(self, session_id: str, track_ids: list[int]) -> pd.DataFrame:
        """Detections of the given tracks with their timestamps, by track then frame."""
        detections = self.store.detections(session_id)
        points = detections[detections.track_id.isin(track_ids)]
        points = points.merge(self.store.frames(session_id)[["frame_index", "timestamp_s"]], on="frame_index")
        return points.sort_values(["track_id", "frame_index"], kind="stable")

    @property
    def closing(self) -> bool:
        return self._closing

    def wait_for_frame(self, session_id: str, after_frame: int, timeout_s: float) -> bool:
        """Block until the session has a frame after ``after_frame`` (True), or timeout/close/shutdown."""
        deadline = time.monotonic() + timeout_s
        with self._new_frame:
            while True:
                if self.store.last_frame_index(session_id) > after_frame:
                    return True
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._closing or self.session(session_id)["closed"]:
                    return False
                self._new_frame.wait(remaining)


def _shadow_columns(shadow: ShadowInput | None) -> dict:
    if shadow is None:
        return {}  # stored as NULL: not shadowed
    return {
        "shadow_model_version": shadow.model_version,
        "shadow_candidate_loop_count": shadow.candidate_loop_count,
        "shadow_matched": shadow.matched,
        "shadow_f1": shadow.f1,
        "shadow_latency_s": shadow.latency_s,
    }


def _loop_values(loops: pd.DataFrame) -> np.ndarray:
    """``loops`` as an (n, 11) float array in ``LOOP_COLUMNS`` order (no copy when already so)."""
    if list(loops.columns) != LOOP_COLUMNS:
        loops = loops[LOOP_COLUMNS]
    return loops.to_numpy(float)


def _spec_problem(spec: dict) -> str | None:
    checks = [
        ("pixel_size_nm", spec.get("pixel_size_nm", 0.0), "the size of one camera pixel in nm"),
        ("frame_rate_hz", spec.get("frame_rate_hz", 0.0), "the nominal camera rate in Hz"),
    ]
    for name, value, meaning in checks:
        if not (np.isfinite(value) and value > 0):
            return f"{name} = {value} must be > 0: set it to {meaning}"
    dose = spec.get("dose_rate_ions_cm2_s", 0.0)
    if not (np.isfinite(dose) and dose >= 0):
        return f"dose_rate_ions_cm2_s = {dose} must be >= 0 (ions/cm^2/s; 0 without irradiation)"
    search = spec.get("search_range_nm", 0.0)
    if not (np.isfinite(search) and search >= 0):
        return f"search_range_nm = {search} must be >= 0 (0 = the tracker's default)"
    return None
