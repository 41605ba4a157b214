"""Loop masks, compact: COCO run-length encoding of each loop's mask within its bounding box.

Full-size masks never leave the server; when a client asks for masks it gets, per loop, one JSON
object ``{"bbox": [x, y, width, height], "counts": ...}`` (px; COCO RLE of the box's pixels,
column-major as pycocotools defines it), a few hundred bytes per loop.

Examples
--------
>>> import numpy as np
>>> crop = np.zeros((4, 6), bool); crop[1:3, 2:5] = True
>>> encoded = encode_mask(MaskCrop(x0=10, y0=20, mask=crop))
>>> decoded = decode_mask(encoded, frame_shape=(32, 32))
>>> bool(decoded[21:23, 12:15].all()), int(decoded.sum())
(True, 6)
"""

from __future__ import annotations

import json
from typing import NamedTuple

import numpy as np
from pycocotools import mask as coco_mask


class MaskCrop(NamedTuple):
    x0: int  # frame px of the crop's left column
    y0: int  # frame px of the crop's top row
    mask: np.ndarray  # bool [h, w]


def encode_mask(crop: MaskCrop) -> bytes:
    rle = coco_mask.encode(np.asfortranarray(crop.mask.astype(np.uint8)))
    h, w = crop.mask.shape
    return json.dumps({"bbox": [crop.x0, crop.y0, w, h], "counts": rle["counts"].decode("ascii")}).encode()


def decode_mask(encoded: bytes, frame_shape: tuple[int, int]) -> np.ndarray:
    """The loop's mask as a full-frame bool image (for clients that need pixels)."""
    data = json.loads(encoded)
    x0, y0, w, h = data["bbox"]
    crop = coco_mask.decode({"size": [h, w], "counts": data["counts"].encode("ascii")}).astype(bool)
    full = np.zeros(frame_shape, bool)
    full[y0 : y0 + h, x0 : x0 + w] = crop
    return full
