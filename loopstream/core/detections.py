"""The wire contract of a frame's loops: one column list, one codec, one shadow rule.

Triton's ``DETECTIONS`` output is a float32 array ``[loops, 11]`` in ``LOOP_COLUMNS`` order; the
tracker receives the same loops as ``loopstream.v1.Loop`` messages (bbox_* columns are the fields
of the nested ``BoundingBox``). Every producer and consumer (client, tracker, tests, benchmarks)
converts through ``encode_loops`` / ``decode_loops`` here, so the order is written down once.

Examples
--------
>>> import numpy as np
>>> detections = np.arange(22, dtype=np.float32).reshape(2, 11)
>>> messages = encode_loops(detections)
>>> messages[1].bbox.height_px, bool((decode_loops(messages) == detections).all())
(21.0, True)
>>> decode_loops([]).shape
(0, 11)
"""

from __future__ import annotations

import hashlib
import operator
from collections.abc import Sequence

import numpy as np

from loopstream.v1 import tracker_pb2 as pb

LOOP_COLUMNS = [
    "score",
    "x_px",
    "y_px",
    "major_px",
    "minor_px",
    "angle_deg",
    "area_px",
    "bbox_x_px",
    "bbox_y_px",
    "bbox_width_px",
    "bbox_height_px",
]
# One Loop message as a tuple in LOOP_COLUMNS order (one C call per loop: the hot path of ingest).
_LOOP_VALUES = operator.attrgetter(*(c.replace("bbox_", "bbox.", 1) for c in LOOP_COLUMNS))


def encode_loops(detections: np.ndarray) -> list[pb.Loop]:
    """``pb.Loop`` messages of a ``DETECTIONS`` array (rows in ``LOOP_COLUMNS`` order)."""
    return [
        pb.Loop(
            score=row[0],
            x_px=row[1],
            y_px=row[2],
            major_px=row[3],
            minor_px=row[4],
            angle_deg=row[5],
            area_px=row[6],
            bbox=pb.BoundingBox(x_px=row[7], y_px=row[8], width_px=row[9], height_px=row[10]),
        )
        for row in np.asarray(detections).reshape(-1, len(LOOP_COLUMNS)).tolist()
    ]


def decode_loops(loops: Sequence[pb.Loop]) -> np.ndarray:
    """The ``[loops, 11]`` float64 array (``LOOP_COLUMNS`` order) of ``pb.Loop`` messages."""
    return np.array(list(map(_LOOP_VALUES, loops)), dtype=float).reshape(-1, len(LOOP_COLUMNS))


def uniform(key: str) -> float:
    """A stable draw in [0, 1) from a string, the same on every host and Python run.

    >>> uniform("abc") == uniform("abc") and 0 <= uniform("abc") < 1
    True
    """
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") / 2.0**64


def shadows_frame(session_id: str, frame_index: int, fraction: float) -> bool:
    """Whether this frame also goes to the shadow candidate: stable per (session, frame).

    The client decides it per frame and the tracker's policy names the fraction; the draw is
    independent of the arm draw (another key), so shadowed frames are a fair sample of all.
    """
    return uniform(f"shadow/{session_id}/{frame_index}") < fraction
