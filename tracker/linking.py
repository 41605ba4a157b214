"""Online linking of one session's detections into tracks with trackpy's ``Linker``.

Two things trackpy does not give us:

* Stable ids per session. ``Linker``'s point and track counters are class attributes, shared by
  every instance in the process and reset by ``init_level`` (DESIGN.md section 3), so its ids
  collide between sessions. We label trackpy's track *objects* with our own per-session counter
  and never read ``track.id``.
* Restart. The linker's whole state after a frame is the points of that frame plus the points of
  tracks lost in the last ``memory`` frames (``mem_set``, ``mem_history``). ``restore`` rebuilds
  exactly that from stored detections, so a restarted tracker links the next frame as the
  uninterrupted one would have.

A session may link on loop size as well as position (``size_weight``): the major axis times the
weight is a third coordinate, so the search range is a distance in (x, y, weighted size) px.

trackpy's module-level counters are not thread safe, so all sessions link under one lock; linking
is pure Python and holds the GIL anyway.
"""

from __future__ import annotations

import threading

import numpy as np
import pandas as pd
from trackpy.linking import Linker
from trackpy.linking.utils import Point, TrackUnstored

_TRACKPY_LOCK = threading.Lock()


class SessionLinker:
    """Links frames one at a time; coordinates in px, ``memory`` in frames (arrivals)."""

    def __init__(
        self, search_range_px: float, memory_frames: int, next_track_id: int = 0, size_weight: float = 0.0
    ) -> None:
        self.search_range_px = float(search_range_px)
        self.memory_frames = int(memory_frames)
        self.next_track_id = next_track_id
        self.size_weight = float(size_weight)
        self._linker: Linker | None = None

    def coordinates(self, x_px: np.ndarray, y_px: np.ndarray, major_px: np.ndarray) -> np.ndarray:
        """What trackpy links on: ``(n, 2)`` positions, or ``(n, 3)`` with the weighted major axis.

        >>> linker = SessionLinker(5.0, 3, size_weight=0.5)
        >>> linker.coordinates(np.array([1.0]), np.array([2.0]), np.array([8.0]))
        array([[1., 2., 4.]])
        """
        if self.size_weight == 0:
            return np.column_stack([x_px, y_px]).astype(float)
        return np.column_stack([x_px, y_px, self.size_weight * np.asarray(major_px)]).astype(float)

    def _new_linker(self) -> Linker:
        # 'recursive': numba makes linking slower here (DESIGN.md); adaptive_stop splits the rare
        # oversized subnet instead of failing the frame.
        return Linker(
            self.search_range_px,
            memory=self.memory_frames,
            link_strategy="recursive",
            adaptive_stop=0.1 * self.search_range_px,
        )

    def link(self, coords_px: np.ndarray, ordinal: int) -> np.ndarray:
        """Track ids (int64) of the next frame's ``coordinates``, in input order."""
        coords_px = np.asarray(coords_px, dtype=float).reshape(-1, 2 if self.size_weight == 0 else 3)
        with _TRACKPY_LOCK:
            if self._linker is None:
                self._linker = self._new_linker()
                self._linker.init_level(coords_px, ordinal)
            else:
                self._linker.next_level(coords_px, ordinal)
            return self._label(self._linker.hash.points)

    def _label(self, points: list) -> np.ndarray:
        ids = np.empty(len(points), dtype=np.int64)
        for i, point in enumerate(points):
            track = point.track
            if not hasattr(track, "session_track_id"):
                track.session_track_id = self.next_track_id
                self.next_track_id += 1
            ids[i] = track.session_track_id
        return ids

    def restore(self, recent: pd.DataFrame, ordinals: list[int]) -> None:
        """Rebuild the state after the last of ``ordinals`` from its stored detections.

        ``recent`` holds the detections (columns ``ordinal, track_id, x_link_px, y_link_px,
        major_px``, in stored order) of the frames with the last ``memory + 1`` ``ordinals``
        (ascending).
        """
        if not ordinals:
            return
        last = ordinals[-1]
        with _TRACKPY_LOCK:
            for cls in (Point, TrackUnstored):  # counters exist only once some init_level ran
                if not hasattr(cls, "counter"):
                    cls.reset_counter()
            linker = self._new_linker()
            ndim = 2 if self.size_weight == 0 else 3
            linker.ndim = ndim
            tracks: dict[int, TrackUnstored] = {}

            def point(row) -> Point:
                coords = self.coordinates(
                    np.array([row.x_link_px]), np.array([row.y_link_px]), np.array([row.major_px])
                )
                p = Point(int(row.ordinal), coords[0])
                track = tracks.get(int(row.track_id))
                if track is None:
                    track = tracks[int(row.track_id)] = TrackUnstored()
                    track.session_track_id = int(row.track_id)
                track.add_point(p)
                return p

            # Each track's latest point is what the linker holds: current points, or memory points.
            latest = recent.drop_duplicates("track_id", keep="last")
            current = [point(r) for r in recent[recent.ordinal == last].itertuples(index=False)]
            linker.hash = linker.hash_cls(
                current, ndim=ndim, to_eucl=linker.to_eucl, dist_func=linker.dist_func
            )
            linker.mem_set = set()
            linker.mem_history = []
            # mem_history[j] holds tracks last seen at the (memory - j)-th frame before the last.
            for age in range(self.memory_frames, 0, -1):
                seen = ordinals[-1 - age] if age < len(ordinals) else None
                lost = latest[latest.ordinal == seen] if seen is not None else latest.iloc[:0]
                points = {point(r) for r in lost.itertuples(index=False)}
                linker.mem_history.append(points)
                linker.mem_set |= points
            self._linker = linker
