"""The latest preview picture of each session, for the live web view.

The client may attach a small JPEG/PNG of a frame to its detections (``FrameDetections.preview``).
The tracker keeps only the newest one per session, in memory: it is what a screen shows now, not
data (the detections are), so it is never written to the store and is gone after a restart until
the next preview arrives. Every preview is bounded here, whatever the gRPC message limit is.
"""

from __future__ import annotations

import io
import threading
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError

from loopstream.v1 import tracker_pb2 as pb

MAX_PREVIEW_SIDE_PX = 512
MAX_PREVIEW_BYTES = 256 * 1024
MEDIA_TYPES = {"image/jpeg": "JPEG", "image/png": "PNG"}  # media type -> the format PIL must read


@dataclass(frozen=True)
class StoredPreview:
    frame_index: int
    media_type: str
    data: bytes
    width_px: int
    height_px: int


def preview_problem(preview: pb.Preview) -> str | None:
    """Why ``preview`` cannot be kept (None when it can): media type, size in bytes and pixels."""
    if preview.media_type not in MEDIA_TYPES:
        return f"preview media_type {preview.media_type!r} is not one of {sorted(MEDIA_TYPES)}"
    if len(preview.data) > MAX_PREVIEW_BYTES:
        return (
            f"preview is {len(preview.data)} bytes, more than {MAX_PREVIEW_BYTES}: send a smaller or "
            "more compressed picture"
        )
    try:
        with Image.open(io.BytesIO(preview.data)) as image:  # reads the header only
            found, size = image.format, image.size
    except (UnidentifiedImageError, OSError):
        return f"preview data is not a readable {preview.media_type} picture"
    if found != MEDIA_TYPES[preview.media_type]:
        return f"preview data is {found}, but its media_type says {preview.media_type}"
    if max(size) > MAX_PREVIEW_SIDE_PX:
        return f"preview is {size[0]}x{size[1]} px: at most {MAX_PREVIEW_SIDE_PX} px on the long side"
    if size != (preview.width_px, preview.height_px):
        return f"preview is {size[0]}x{size[1]} px but says {preview.width_px}x{preview.height_px}"
    return None


class LatestPreviews:
    """Session id -> its newest preview; thread-safe (ingest threads write, the web view reads)."""

    def __init__(self) -> None:
        self._latest: dict[str, StoredPreview] = {}
        self._lock = threading.Lock()

    def offer(self, session_id: str, frame_index: int, preview: pb.Preview) -> str | None:
        """Keep ``preview`` if it is valid and newer than the one held; returns the problem, if any."""
        problem = preview_problem(preview)
        if problem:
            return problem
        stored = StoredPreview(
            frame_index, preview.media_type, bytes(preview.data), preview.width_px, preview.height_px
        )
        with self._lock:
            held = self._latest.get(session_id)
            if held is None or held.frame_index < frame_index:
                self._latest[session_id] = stored
        return None

    def get(self, session_id: str) -> StoredPreview | None:
        with self._lock:
            return self._latest.get(session_id)

    def discard(self, session_id: str) -> None:
        with self._lock:
            self._latest.pop(session_id, None)
