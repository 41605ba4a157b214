"""The semantic-segmentation pipeline: frame in, loop detections out.

Split in two halves around the core model call, so the same code runs in-process (benchmarks,
tests) and inside Triton, where the core model is a separate, dynamically batched model reached
by BLS requests from ``model_repository/loops_semantic``.

Examples
--------
>>> import numpy as np
>>> config = SemanticPipelineConfig(tile_px=256, overlap_px=32)
>>> prepared = prepare_frame(np.zeros((300, 400), np.uint16), config)
>>> prepared.tiles_input.shape
(4, 1, 256, 256)
>>> finish_frame(np.full((4, 2, 256, 256), -5.0, np.float32), prepared, config).shape[0]
0
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from loopstream.imaging import Tile, cut_tiles, standardise, stitch, tile_grid
from loopstream.instances import detections_from_labels, labels_from_probability

MIN_SIDE_PX = 32
MAX_SIDE_PX = 4096
FRAME_DTYPES = ("uint8", "uint16")


class FrameError(ValueError):
    """A frame the pipeline cannot analyse; the message says what was wrong and what to send."""


@dataclass(frozen=True)
class SemanticPipelineConfig:
    tile_px: int = 512
    overlap_px: int = 64  # > the largest loop's diameter in px, so each loop is whole in one tile
    threshold: float = 0.5  # on the sigmoid probability of both channels
    min_area_px: int = 12


@dataclass(frozen=True)
class PreparedFrame:
    shape: tuple[int, int]
    tiles: list[Tile]
    tiles_input: np.ndarray  # [N, 1, tile, tile] float32, standardised


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


def prepare_frame(frame: np.ndarray, config: SemanticPipelineConfig) -> PreparedFrame:
    validate_frame(frame)
    tiles = tile_grid(frame.shape, config.tile_px, config.overlap_px)
    return PreparedFrame(frame.shape, tiles, cut_tiles(standardise(frame), tiles))


def finish_frame(logits: np.ndarray, prepared: PreparedFrame, config: SemanticPipelineConfig) -> pd.DataFrame:
    """Detections (``loopstream.instances.DETECTION_COLUMNS``) from the core model's tile logits."""
    probability = 1.0 / (1.0 + np.exp(-stitch(logits, prepared.tiles, prepared.shape)))
    labels = labels_from_probability(
        probability[0], probability[1], threshold=config.threshold, min_area_px=config.min_area_px
    )
    return detections_from_labels(labels, probability[0])


def analyse_frame(
    frame: np.ndarray,
    infer_tiles: Callable[[np.ndarray], np.ndarray],
    config: SemanticPipelineConfig,
) -> pd.DataFrame:
    """The whole pipeline with a synchronous core model call (in-process use)."""
    prepared = prepare_frame(frame, config)
    return finish_frame(infer_tiles(prepared.tiles_input), prepared, config)
