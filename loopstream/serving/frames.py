"""Frames as every pipeline receives them: validated, standardised and cut into tiles.

Examples
--------
>>> import numpy as np
>>> prepared = prepare_frame(np.zeros((300, 400), np.uint16), tile_px=256, overlap_px=32)
>>> prepared.tiles_input.shape
(4, 1, 256, 256)
>>> try:
...     validate_frame(np.zeros((8, 8), np.uint8))
... except FrameError as error:
...     print(str(error)[:59])
frame is 8 x 8 px; each side must be between 32 and 4096 px
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from loopstream.core.imaging import Tile, cut_tiles, standardise, tile_grid

MIN_SIDE_PX = 32
MAX_SIDE_PX = 4096
FRAME_DTYPES = ("uint8", "uint16")


class FrameError(ValueError):
    """A frame no pipeline can analyse; the message says what was wrong and what to send."""


@dataclass(frozen=True)
class PreparedFrame:
    shape: tuple[int, int]
    tiles: list[Tile]
    tiles_input: np.ndarray  # [N, 1, tile height, tile width] float32, standardised
    image: np.ndarray  # [H, W] float32, the whole normalised frame: detections are checked on it
    scale: float = 1.0  # network px per frame px: the frame was resampled by it before tiling
    frame_shape: tuple[int, int] = (0, 0)  # the frame's own shape (``shape`` is the resampled one)


def validate_frame(frame: np.ndarray) -> None:
    """Raise FrameError unless ``frame`` is a 2-D uint8/uint16 image of a supported size."""
    if frame.dtype.name not in FRAME_DTYPES:
        raise FrameError(f"frame dtype is {frame.dtype.name}; send uint8 or uint16 camera counts")
    if frame.ndim != 2:
        raise FrameError(f"frame has shape {frame.shape}; send one greyscale image of shape [height, width]")
    h, w = frame.shape
    if min(h, w) < MIN_SIDE_PX or max(h, w) > MAX_SIDE_PX:
        raise FrameError(
            f"frame is {h} x {w} px; each side must be between {MIN_SIDE_PX} and {MAX_SIDE_PX} px "
            "(bin or crop larger frames on the client)"
        )


def select_frame(frame_u8: np.ndarray | None, frame_u16: np.ndarray | None) -> np.ndarray:
    """The one frame of a request, from whichever of the inputs FRAME_U8 / FRAME_U16 it carries."""
    given = [f for f in (frame_u8, frame_u16) if f is not None]
    if len(given) != 1:
        raise FrameError("send exactly one of the inputs FRAME_U8 (uint8 frame) or FRAME_U16 (uint16 frame)")
    return given[0]


def counts_8bit(frame: np.ndarray) -> np.ndarray:
    """Camera counts on the 8-bit scale, float32: what networks that normalise inside take
    (imported detectron2 models subtract their PIXEL_MEAN themselves); uint16 keeps its top byte.

    >>> counts_8bit(np.array([[25600, 65535]], np.uint16)).tolist()
    [[100.0, 255.99609375]]
    """
    image = frame.astype(np.float32)
    return image / np.float32(256.0) if frame.dtype == np.uint16 else image


NORMALISATIONS = {"standardise": standardise, "counts_8bit": counts_8bit}


def prepare_frame(
    frame: np.ndarray,
    tile_px: int,
    overlap_px: int,
    normalisation: str = "standardise",
    scale: float = 1.0,
    stride_px: int = 0,
) -> PreparedFrame:
    """Validate, resample by ``scale`` (to the network's pixel size), normalise the whole frame
    (per-frame standardisation by default), then cut tiles; with ``stride_px`` (the network's),
    each side's tiles are as few and as small as the overlap allows (``tile_side``): a frame
    smaller than a tile is one tile padded only to the stride on each side."""
    validate_frame(frame)
    source_shape = (frame.shape[0], frame.shape[1])
    if scale != 1.0:
        size = (max(round(frame.shape[1] * scale), 1), max(round(frame.shape[0] * scale), 1))
        if max(size) > MAX_SIDE_PX or min(size) < MIN_SIDE_PX:
            raise FrameError(
                f"frame of {frame.shape[0]} x {frame.shape[1]} px would be {size[1]} x {size[0]} px at "
                f"the network's pixel size (x{scale:.3g}); each side must stay between {MIN_SIDE_PX} "
                f"and {MAX_SIDE_PX} px: bin or crop the frame on the client"
            )
        frame = cv2.resize(frame, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    shape = (frame.shape[0], frame.shape[1])
    tiles = tile_grid(shape, tile_px, overlap_px, stride_px)
    image = NORMALISATIONS[normalisation](frame)
    return PreparedFrame(shape, tiles, cut_tiles(image, tiles), image, scale, source_shape)
