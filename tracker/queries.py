"""What is read back about stored frames: statistics and summaries, arm statistics, tracks.

Each answer reads the session's detections from the store at most once, and gives lengths in nm
(``statistics`` converts with the session's pixel size): the service layer only translates.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from loopstream.tracker import statistics
from loopstream.tracker.sessions import SessionCatalog
from loopstream.tracker.store import Store


class SessionQueries:
    """Reads of one store, by session."""

    def __init__(self, store: Store, sessions: SessionCatalog) -> None:
        self.store = store
        self.sessions = sessions

    def statistics(
        self, session_id: str, from_frame: int = 0, to_frame: int | None = None
    ) -> tuple[pd.DataFrame, dict, dict]:
        """Per-frame statistics in [from_frame, to_frame], the session's summary and the window's.

        The window's summary sees only the window: a track's lifetime there is the part inside it.
        """
        spec = self.sessions.get(session_id)
        frames = statistics.with_dose(self.store.frames(session_id), spec["dpa_per_ion_cm2"])
        detections = self.store.detections(session_id)
        summary = statistics.session_summary(frames, detections, spec)
        upper = np.inf if to_frame is None else to_frame
        in_frames = frames[(frames.frame_index >= from_frame) & (frames.frame_index <= upper)].reset_index(
            drop=True
        )
        in_detections = detections[(detections.frame_index >= from_frame) & (detections.frame_index <= upper)]
        return in_frames, summary, statistics.session_summary(in_frames, in_detections, spec)

    def arm_statistics(self, pipeline: str = "", since_unix_s: float = 0.0) -> pd.DataFrame:
        """Per-arm statistics (``statistics.ARM_STATISTICS``) of the sessions opened since then."""
        return statistics.arm_statistics(self.store.arm_frames(pipeline, since_unix_s))

    def frames(self, session_id: str, from_frame: int = 0) -> pd.DataFrame:
        """Stored per-frame statistics from ``from_frame`` on, with the dose in dpa."""
        dpa_per_ion_cm2 = self.sessions.get(session_id)["dpa_per_ion_cm2"]
        return statistics.with_dose(self.store.frames(session_id, from_frame), dpa_per_ion_cm2)

    def tracks(self, session_id: str, min_length: int = 1) -> pd.DataFrame:
        """``statistics.tracks_table`` of the tracks with at least ``min_length`` detections."""
        pixel_nm, detections, frames = self._tracked(session_id)
        return _long_enough(statistics.tracks_table(detections, frames, pixel_nm), min_length)

    def tracks_with_points(self, session_id: str, min_length: int = 1) -> tuple[pd.DataFrame, pd.DataFrame]:
        """The tracks of ``tracks`` and their detections (``statistics.track_points``), from one
        read of the session's detections."""
        pixel_nm, detections, frames = self._tracked(session_id)
        table = _long_enough(statistics.tracks_table(detections, frames, pixel_nm), min_length)
        return table, statistics.track_points(detections, frames, table.track_id, pixel_nm)

    def _tracked(self, session_id: str) -> tuple[float, pd.DataFrame, pd.DataFrame]:
        """The session's pixel size (nm), detections and frames: what tracks are made of."""
        pixel_nm = self.sessions.get(session_id)["pixel_size_nm"]
        return pixel_nm, self.store.detections(session_id), self.store.frames(session_id)


def _long_enough(tracks: pd.DataFrame, min_length: int) -> pd.DataFrame:
    return tracks[tracks.length >= min_length].reset_index(drop=True)
