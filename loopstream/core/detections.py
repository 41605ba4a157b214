"""The wire contract of a frame's loops: one column list, one codec, one shadow rule.

Triton's ``DETECTIONS`` output is a float32 array ``[loops, 11]`` in ``LOOP_COLUMNS`` order. The
tracker receives the same array as ``FrameDetections.loop_table`` (its bytes, little-endian), or,
from clients older than the table, as one ``loopstream.v1.Loop`` message per loop (bbox_* columns
are the fields of the nested ``BoundingBox``). Every producer and consumer (client, tracker,
tests, benchmarks) converts through ``put_loops`` / ``message_loops`` here, so the order is
written down once; on the tracker's side a frame's loops are then one float64 array, in this
order, from the decoded message to the SQL insert.

Examples
--------
>>> import numpy as np
>>> detections = np.arange(22, dtype=np.float32).reshape(2, 11)
>>> table, messages = pb.FrameDetections(), pb.FrameDetections()
>>> put_loops(table, detections)
>>> put_loops(messages, detections, table=False)
>>> len(table.loop_table), messages.loops[1].bbox.height_px
(88, 21.0)
>>> bool((message_loops(table) == detections).all() and (message_loops(messages) == detections).all())
True
>>> message_loops(pb.FrameDetections()).shape, loop_count(table)
((0, 11), 2)
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
# One Loop message as a tuple in LOOP_COLUMNS order (one C call per loop: old clients' ingest path).
_LOOP_VALUES = operator.attrgetter(*(c.replace("bbox_", "bbox.", 1) for c in LOOP_COLUMNS))
_TABLE_DTYPE = np.dtype("<f4")
LOOP_TABLE_ROW_BYTES = len(LOOP_COLUMNS) * _TABLE_DTYPE.itemsize


def put_loops(message: pb.FrameDetections, detections: np.ndarray, table: bool = True) -> None:
    """Set the loops of ``message`` from a ``DETECTIONS`` array (rows in ``LOOP_COLUMNS`` order).

    ``table``: as one ``loop_table`` (a tracker whose ``Session.reads_loop_table`` says it reads
    it); else as ``Loop`` messages, the form trackers older than the table read.
    """
    rows = np.asarray(detections).reshape(-1, len(LOOP_COLUMNS))
    if table:
        message.loop_table = np.ascontiguousarray(rows, dtype=_TABLE_DTYPE).tobytes()
    else:
        message.loops.extend(encode_loops(rows))


def message_loops(message: pb.FrameDetections) -> np.ndarray:
    """The ``[loops, 11]`` float64 array (``LOOP_COLUMNS`` order) of a frame, from either form.

    Raises ValueError, with what to do, for a table that is not whole rows or a message with both.
    """
    data = message.loop_table
    if not data:
        return _decode_loops(message.loops)
    if len(message.loops):
        raise ValueError(
            f"frame {message.frame_index} has both loop_table and {len(message.loops)} Loop messages: "
            "send the loops in one form only"
        )
    if len(data) % LOOP_TABLE_ROW_BYTES:
        raise ValueError(
            f"loop_table of frame {message.frame_index} has {len(data)} bytes, not a whole number of "
            f"loops ({LOOP_TABLE_ROW_BYTES} bytes each: {len(LOOP_COLUMNS)} little-endian float32 in "
            "LOOP_COLUMNS order); encode it with loopstream.core.detections.put_loops"
        )
    return np.frombuffer(data, _TABLE_DTYPE).reshape(-1, len(LOOP_COLUMNS)).astype(np.float64)


def loop_count(message: pb.FrameDetections) -> int:
    """How many loops ``message`` carries, in whichever form (without decoding them)."""
    return len(message.loop_table) // LOOP_TABLE_ROW_BYTES or len(message.loops)


def encode_loops(detections: np.ndarray) -> list[pb.Loop]:
    """``pb.Loop`` messages of a ``DETECTIONS`` array (rows in ``LOOP_COLUMNS`` order): the form
    of clients older than ``loop_table``."""
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


def _decode_loops(loops: Sequence[pb.Loop]) -> np.ndarray:
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
