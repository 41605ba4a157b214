"""Agreement between a session's detections and a shadow candidate's on the same frame.

A loop of one set matches at most one loop of the other, greedily by decreasing ellipse IoU,
and only at IoU >= 0.5; agreement is the F1 of those matches (1 when both find the same loops,
including when both find none) plus the difference in loop counts (candidate minus session).
Ellipses are compared by rasterising them with OpenCV, in the convention the detections use
(``cv2.fitEllipse``'s: full axes, angle of the major axis in degrees).

>>> import numpy as np
>>> session = np.array([[0.9, 50, 40, 20, 10, 30, 157, 40, 33, 20, 15]], np.float32)
>>> agreement(session, session)
Agreement(matched=1, session_count=1, candidate_count=1, f1=1.0)
>>> shifted = session.copy(); shifted[:, 1] += 8
>>> agreement(session, shifted).f1
0.0
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np
import pandas as pd

from loopstream.client.inference import FrameResult
from loopstream.core.detections import LOOP_COLUMNS

MIN_IOU = 0.5
ELLIPSE_COLUMNS = ["x_px", "y_px", "major_px", "minor_px", "angle_deg"]
_ELLIPSE_INDEX = [LOOP_COLUMNS.index(c) for c in ELLIPSE_COLUMNS]
_RASTER_PX = 64  # the joint box is drawn at least this wide, so small loops get sub-pixel IoU


@dataclass(frozen=True)
class Agreement:
    matched: int
    session_count: int
    candidate_count: int
    f1: float

    @property
    def count_difference(self) -> int:
        """Candidate minus session: > 0 when the candidate finds more loops."""
        return self.candidate_count - self.session_count


def ellipses(detections: np.ndarray | pd.DataFrame) -> np.ndarray:
    """(N, 5) float64 x, y, major, minor, angle of a detections array (N, 11) or DataFrame."""
    if isinstance(detections, pd.DataFrame):
        return detections[ELLIPSE_COLUMNS].to_numpy(np.float64)
    return np.asarray(detections, np.float64).reshape(-1, len(LOOP_COLUMNS))[:, _ELLIPSE_INDEX]


def ellipse_iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two ellipses (x, y, major, minor, angle), drawn filled in their joint bounding box.

    >>> round(ellipse_iou(np.array([10, 10, 8, 8, 0]), np.array([10, 10, 8, 4, 0])), 1)
    0.5
    """
    reach = max(a[2], b[2]) / 2 + 1  # half the longest axis bounds either ellipse around its centre
    x0, y0 = min(a[0], b[0]) - reach, min(a[1], b[1]) - reach
    x1, y1 = max(a[0], b[0]) + reach, max(a[1], b[1]) + reach
    scale = max(1.0, _RASTER_PX / max(x1 - x0, y1 - y0))
    shape = (int(np.ceil((y1 - y0) * scale)) + 1, int(np.ceil((x1 - x0) * scale)) + 1)
    masks = []
    for x, y, major, minor, angle in (a.tolist(), b.tolist()):  # cv2 wants Python floats
        mask = np.zeros(shape, np.uint8)
        box = (((x - x0) * scale, (y - y0) * scale), (major * scale, minor * scale), angle)
        cv2.ellipse(mask, box, (1,), -1)
        masks.append(mask.astype(bool))
    union = np.count_nonzero(masks[0] | masks[1])
    return np.count_nonzero(masks[0] & masks[1]) / union if union else 0.0


def match_loops(
    session: np.ndarray | pd.DataFrame, candidate: np.ndarray | pd.DataFrame, min_iou: float = MIN_IOU
) -> list[tuple[int, int, float]]:
    """Greedy one-to-one matches (session row, candidate row, IoU), best IoU first.

    Only pairs whose centres are closer than their half major axes combined can overlap, so
    only those are rasterised: a frame of a hundred loops costs about a hundred IoUs, not 10^4.
    """
    a, b = ellipses(session), ellipses(candidate)
    distance = np.hypot(a[:, None, 0] - b[None, :, 0], a[:, None, 1] - b[None, :, 1])
    close = distance < (a[:, None, 2] + b[None, :, 2]) / 2
    pairs = [(ellipse_iou(a[i], b[j]), int(i), int(j)) for i, j in zip(*np.nonzero(close), strict=True)]
    used_a, used_b, matches = set(), set(), []
    for iou, i, j in sorted(pairs, reverse=True):
        if iou >= min_iou and i not in used_a and j not in used_b:
            used_a.add(i)
            used_b.add(j)
            matches.append((i, j, iou))
    return matches


def agreement(
    session: np.ndarray | pd.DataFrame, candidate: np.ndarray | pd.DataFrame, min_iou: float = MIN_IOU
) -> Agreement:
    """Matched-loop F1 and counts of a session's detections against the candidate's."""
    n_session, n_candidate = len(ellipses(session)), len(ellipses(candidate))
    matched = len(match_loops(session, candidate, min_iou))
    total = n_session + n_candidate
    f1 = 2 * matched / total if total else 1.0
    return Agreement(matched, n_session, n_candidate, f1)


@dataclass
class _Waiting:
    shadowed: bool
    session: FrameResult | None = None
    candidate: FrameResult | None = None
    candidate_done: bool = False

    @property
    def complete(self) -> bool:
        return self.session is not None and (self.candidate_done or not self.shadowed)


class ShadowJoin:
    """Pairs each frame's session answer with its candidate answer, and releases frames in order.

    The tracker takes a session's frames in increasing index order only, so a frame answered
    early waits behind a shadowed one whose candidate answer is still out. ``release`` is called
    exactly once per expected frame, under the join's lock (so releases never interleave), with
    the session's answer and the candidate's (None when not shadowed or when the candidate failed).
    """

    def __init__(self, release: Callable[[FrameResult, FrameResult | None], None]) -> None:
        self.release = release
        self._waiting: OrderedDict[int, _Waiting] = OrderedDict()
        self._lock = threading.Lock()

    def expect(self, frame_index: int, shadowed: bool) -> None:
        """Register a frame before it is submitted anywhere (answers can come back at once)."""
        with self._lock:
            self._waiting[frame_index] = _Waiting(shadowed)

    def session_answered(self, result: FrameResult) -> None:
        with self._lock:
            self._waiting[result.frame.index].session = result
            self._release_ready()

    def candidate_answered(self, frame_index: int, result: FrameResult | None) -> None:
        """The candidate's answer, or None when it failed: the frame then goes on without agreement."""
        with self._lock:
            waiting = self._waiting.get(frame_index)
            if waiting is None or waiting.candidate_done:
                return  # already abandoned (the candidate stream failed earlier)
            waiting.candidate, waiting.candidate_done = result, True
            self._release_ready()

    def abandon_candidates(self) -> None:
        """Stop waiting for any candidate answer (the candidate stream is gone)."""
        with self._lock:
            for waiting in self._waiting.values():
                waiting.candidate_done = True
            self._release_ready()

    def _release_ready(self) -> None:
        while self._waiting and next(iter(self._waiting.values())).complete:
            _, waiting = self._waiting.popitem(last=False)
            assert waiting.session is not None  # complete: the session answered
            self.release(waiting.session, waiting.candidate)
