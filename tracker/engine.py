"""The tracker's domain API over one store: the three concerns the gRPC service translates to.

``sessions.SessionCatalog`` holds what a session is (opened, read, listed), ``ingest.FrameIngest``
what happens to its frames (validated, linked, measured, committed; watchers woken), and
``queries.SessionQueries`` what is read back (statistics, tracks). ``TrackerEngine`` wires them to
one store and names each operation once for the service, the web view and the export.
"""

from __future__ import annotations

from collections.abc import Callable

import pandas as pd

from loopstream.tracker.ingest import FrameIngest, IngestResult
from loopstream.tracker.queries import SessionQueries
from loopstream.tracker.rollout import Assignment
from loopstream.tracker.sessions import Defaults, SessionCatalog
from loopstream.tracker.store import Store
from loopstream.tracker.validation import FrameInput


class TrackerEngine:
    def __init__(
        self,
        store: Store,
        defaults: Defaults | None = None,
        on_commit: Callable[[float], None] | None = None,
        assign: Callable[[str], Assignment] | None = None,
    ) -> None:
        self.store = store
        self._catalog = SessionCatalog(store, defaults or Defaults(), assign)
        self._intake = FrameIngest(store, on_commit)
        self._queries = SessionQueries(store, self._catalog)

    # -- sessions ---------------------------------------------------------------------------

    def open_session(self, spec: dict) -> dict:
        """Store a new session. ``spec`` has the SessionSpec fields; returns the session record."""
        return self._catalog.open(spec)

    def session(self, session_id: str) -> dict:
        """The session record with its progress (frames_stored, last_frame_index)."""
        return self._catalog.get(session_id)

    def sessions(self, include_closed: bool) -> list[dict]:
        return self._catalog.list(include_closed)

    def open_sessions(self) -> int:
        return self._catalog.count_open()

    def close_session(self, session_id: str) -> dict:
        self._catalog.get(session_id)  # SessionNotFound before anything changes
        self._intake.close(session_id)
        return self._catalog.get(session_id)

    # -- ingest -----------------------------------------------------------------------------

    def ingest(self, frame: FrameInput) -> IngestResult:
        """Link, measure and durably store one frame; idempotent by (session, frame index) and content."""
        return self._intake.ingest(frame)

    @property
    def closing(self) -> bool:
        return self._intake.closing

    def shutdown(self) -> None:
        """Refuse new frames from now on; commits in flight finish."""
        self._intake.shutdown()

    def wait_for_frame(self, session_id: str, after_frame: int, timeout_s: float) -> bool:
        """Block until the session has a frame after ``after_frame`` (True), or timeout/close/shutdown."""
        return self._intake.wait_for_frame(session_id, after_frame, timeout_s)

    # -- queries ----------------------------------------------------------------------------

    def statistics(
        self, session_id: str, from_frame: int = 0, to_frame: int | None = None
    ) -> tuple[pd.DataFrame, dict, dict]:
        """Per-frame statistics in [from_frame, to_frame], the session's summary and the window's."""
        return self._queries.statistics(session_id, from_frame, to_frame)

    def arm_statistics(self, pipeline: str = "", since_unix_s: float = 0.0) -> pd.DataFrame:
        return self._queries.arm_statistics(pipeline, since_unix_s)

    def frames(self, session_id: str, from_frame: int = 0) -> pd.DataFrame:
        """Stored per-frame statistics from ``from_frame`` on, with the dose in dpa."""
        return self._queries.frames(session_id, from_frame)

    def tracks(self, session_id: str, min_length: int = 1) -> pd.DataFrame:
        return self._queries.tracks(session_id, min_length)

    def tracks_with_points(self, session_id: str, min_length: int = 1) -> tuple[pd.DataFrame, pd.DataFrame]:
        """Tracks and their points (sizes in nm), from one read of the detections."""
        return self._queries.tracks_with_points(session_id, min_length)
