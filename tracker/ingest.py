"""A frame's way into the store: validate -> link -> drift -> statistics -> commit, once per frame.

Live per-session state (linker, drift) is a cache of what the store holds: it is built lazily from
the store on a session's first frame after a start, and thrown away if a commit fails, so memory
and store never disagree. The frame's loops stay the one array ``FrameInput.loops`` throughout:
validated, hashed, linked and measured on its columns, and stored as its rows with the computed
columns beside them.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np

from loopstream.tracker import statistics
from loopstream.tracker.drift import DriftEstimator, inside_frame, predicted_drift
from loopstream.tracker.linking import SessionLinker
from loopstream.tracker.sessions import SessionNotFound
from loopstream.tracker.store import NEXT_TRACK_COLUMN, Store
from loopstream.tracker.validation import (
    LOOP_COLUMNS,
    FrameInput,
    ShadowInput,
    content_hash,
    frame_problem,
)

log = logging.getLogger("loopstream.tracker")

# Why a frame was not stored: a fixed set, so metrics can count rejections by reason.
REJECTIONS = (
    "invalid",
    "unknown_session",
    "closed",
    "backwards",
    "conflict",
    "shutting_down",
    "store",
    "internal",
)
_X, _Y, _MAJOR, _MINOR = (LOOP_COLUMNS.index(c) for c in ("x_px", "y_px", "major_px", "minor_px"))


@dataclass(frozen=True)
class IngestResult:
    accepted: bool
    duplicate: bool = False
    error: str = ""
    rejection: str = ""  # one of REJECTIONS when not accepted
    # The session's stored microscope id, arm and shadow candidate (validated at OpenSession):
    # the only values metrics may use as labels. Empty when the frame was rejected.
    microscope_id: str = ""
    arm: str = ""
    shadow_arm: str = ""


def rejected(rejection: str, error: str) -> IngestResult:
    """A frame not stored, for one of ``REJECTIONS``, with the sentence the client is told."""
    return IngestResult(False, error=error, rejection=rejection)


@dataclass
class _Live:
    """In-memory state of one session, rebuilt from the store when missing."""

    spec: dict
    linker: SessionLinker
    drift: DriftEstimator
    frames_stored: int
    last_frame_index: int
    lock: threading.Lock = field(default_factory=threading.Lock)


class FrameIngest:
    """Stores the frames of every session of one store, and tells watchers when one arrives."""

    def __init__(self, store: Store, on_commit: Callable[[float], None] | None = None) -> None:
        self.store = store
        self.on_commit = on_commit  # metrics hook: seconds one frame's transaction took
        self._live: dict[str, _Live] = {}
        self._live_lock = threading.Lock()
        # One condition per watched session: a stored frame wakes only that session's watchers.
        self._new_frames: dict[str, threading.Condition] = {}
        self._closing = False

    @property
    def closing(self) -> bool:
        return self._closing

    def shutdown(self) -> None:
        """Refuse new frames from now on; commits in flight finish (they hold their session lock)."""
        self._closing = True
        with self._live_lock:
            conditions = list(self._new_frames.values())
        for condition in conditions:
            _notify(condition)

    def close(self, session_id: str) -> None:
        """Mark the session closed in the store after any commit in flight, before any further
        frame, and wake its watchers."""
        with self._live_lock:
            live = self._live.get(session_id)
        if live is None:
            self.store.close_session(session_id)
        else:
            with live.lock:
                self.store.close_session(session_id)
                live.spec["closed"] = 1
        with self._live_lock:  # a state rebuilt meanwhile may have read the session still open
            stale = self._live.pop(session_id, None)
        if stale is not None and stale is not live:
            with stale.lock:
                stale.spec["closed"] = 1
        log.info("session closed", extra={"session_id": session_id})
        with self._live_lock:
            condition = self._new_frames.pop(session_id, None)
        _notify(condition)

    def ingest(self, frame: FrameInput) -> IngestResult:
        """Link, measure and durably store one frame; idempotent by (session, frame index) and content."""
        if self._closing:
            return rejected("shutting_down", "tracker is shutting down: resend this frame after it restarts")
        problem = frame_problem(frame)  # before any lookup: nothing unchecked reaches the store
        if problem:
            return rejected("invalid", problem)
        try:
            live = self._live_session(frame.session_id)
        except SessionNotFound as e:
            return rejected("unknown_session", str(e))
        if live.spec["closed"]:
            return rejected("closed", f"session {frame.session_id} is closed: open a new session")
        digest = content_hash(frame)
        with live.lock:
            if frame.frame_index <= live.last_frame_index:
                return self._resent(live, frame, digest)
            try:
                row, detections = self._process(live, frame)
                row["content_sha256"] = digest
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
        with self._live_lock:
            condition = self._new_frames.get(frame.session_id)
        _notify(condition)
        return _labelled(live, IngestResult(True))

    def _resent(self, live: _Live, frame: FrameInput, digest: bytes) -> IngestResult:
        """A frame at or before the last stored one: a duplicate if stored with this content."""
        stored = self.store.frame_hash(frame.session_id, frame.frame_index)
        if stored is None:
            return rejected(
                "backwards",
                f"frame_index {frame.frame_index} goes backwards: session {frame.session_id} has "
                f"stored up to frame {live.last_frame_index} and frames must arrive in increasing "
                "order; send only frames after the last acknowledged one",
            )
        if stored and stored != digest:  # b"": stored before hashes were kept
            return rejected(
                "conflict",
                f"frame {frame.frame_index} of session {frame.session_id} is already stored with "
                "different content (time, size, model or loops): a resend must be identical; "
                "number a new frame with the next frame_index",
            )
        return _labelled(live, IngestResult(True, duplicate=True))

    def _process(self, live: _Live, frame: FrameInput) -> tuple[dict, np.ndarray]:
        """The frame's stored row (statistics included) and its detections (store columns)."""
        spec, values = live.spec, frame.loops
        ordinal = live.frames_stored
        x, y = values[:, _X], values[:, _Y]
        pred_x, pred_y = live.drift.predict()
        known_below = live.linker.next_track_id
        track_ids = live.linker.link(
            live.linker.coordinates(x - pred_x, y - pred_y, values[:, _MAJOR]), ordinal
        )
        inside = inside_frame(x, y, values[:, _MAJOR], frame.width_px, frame.height_px)
        drift = live.drift.update(track_ids, x, y, inside, ordinal)
        n = len(values)
        detections = np.column_stack(
            [
                np.full(n, frame.frame_index),
                np.arange(n),
                track_ids,
                values,
                x - drift.x_px,
                y - drift.y_px,
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
            NEXT_TRACK_COLUMN: live.linker.next_track_id,
            "received_unix_s": time.time(),
            "latency_s": frame.latency_s or None,  # 0 = not measured
            **_shadow_columns(frame.shadow),
            **statistics.frame_drift(drift, pixel_nm),
            **statistics.frame_statistics(
                values[:, _MAJOR],
                values[:, _MINOR],
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
        linker = SessionLinker(
            spec["search_range_nm"] / spec["pixel_size_nm"], memory, size_weight=spec["size_weight"]
        )
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

    def wait_for_frame(self, session_id: str, after_frame: int, timeout_s: float) -> bool:
        """Block until the session has a frame after ``after_frame`` (True), or timeout/close/shutdown."""
        deadline = time.monotonic() + timeout_s
        with self._live_lock:
            condition = self._new_frames.setdefault(session_id, threading.Condition())
        with condition:
            while True:
                if self.store.last_frame_index(session_id) > after_frame:
                    return True
                remaining = deadline - time.monotonic()
                session = self.store.session(session_id)
                if remaining <= 0 or self._closing or session is None or session["closed"]:
                    return False
                condition.wait(remaining)


def _labelled(live: _Live, result: IngestResult) -> IngestResult:
    spec = live.spec
    return replace(
        result,
        microscope_id=spec["microscope_id"],
        arm=spec["model_version"],
        shadow_arm=spec["shadow_model_version"],
    )


def _notify(condition: threading.Condition | None) -> None:
    if condition is not None:
        with condition:
            condition.notify_all()


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
