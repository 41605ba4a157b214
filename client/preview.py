"""The small picture of a frame a client may send with its detections, for the live web view.

Display only: contrast-stretched to 8 bits between the 0.5th and 99.5th percentiles (16-bit
detector frames are mostly dark otherwise), shrunk to fit ``max_side_px``, JPEG-encoded. The
tracker bounds what it accepts (``loopstream.tracker.previews``); these defaults stay inside.
"""

from __future__ import annotations

import cv2
import numpy as np

from loopstream.v1 import tracker_pb2 as pb

DEFAULT_SIDE_PX = 512
JPEG_QUALITY = 80


def preview_message(image: np.ndarray, max_side_px: int = DEFAULT_SIDE_PX) -> pb.Preview:
    """A JPEG preview of a 2-D frame, at most ``max_side_px`` on its long side."""
    if image.ndim != 2:
        raise ValueError(f"a preview is made of a 2-D frame, not one of shape {image.shape}")
    if max_side_px < 1:
        raise ValueError(f"preview size {max_side_px} px: use at least 1 px")
    low, high = np.percentile(image, (0.5, 99.5))
    scaled = np.clip((image.astype(np.float32) - low) * (255.0 / max(high - low, 1e-6)), 0, 255)
    h, w = image.shape
    factor = min(1.0, max_side_px / max(h, w))
    size = (max(1, round(w * factor)), max(1, round(h * factor)))
    small = cv2.resize(scaled.astype(np.uint8), size, interpolation=cv2.INTER_AREA)
    ok, jpeg = cv2.imencode(".jpg", small, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise RuntimeError("OpenCV could not encode the preview as JPEG")
    return pb.Preview(media_type="image/jpeg", data=jpeg.tobytes(), width_px=size[0], height_px=size[1])
