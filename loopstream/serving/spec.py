"""The one configuration of a pipeline version: ``<pipeline>/<version>/pipeline.json``.

Every setting of the post-processing lives here under one name, read once when the version is
loaded (Triton's glue, evaluation, benchmarks and tests alike), and handed as it is to the
family's merge code (``loopstream.serving.semantic`` / ``loopstream.serving.instance_merge``).

Examples
--------
>>> spec = PipelineSpec(family="instance", threshold=0.8, pixel_nm=0.390625)
>>> spec.resample_factor(0.78125), spec.resample_factor(None)
(2.0, 1.0)
>>> PipelineSpec(family="instance", pixel_nm=0.390625, zoom=1.5).resample_factor(0.78125)
3.0
>>> PipelineSpec(pixel_nm=-1.0)
Traceback (most recent call last):
...
ValueError: pixel_nm is -1.0 nm/px; give the positive pixel size the network was trained at, or null
>>> PipelineSpec(zoom=0.0)
Traceback (most recent call last):
...
ValueError: zoom 0.0 must be between 0.25 and 4
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from loopstream.serving.core_models import CORE_FILES
from loopstream.serving.frames import NORMALISATIONS, FrameError

FAMILIES = ("semantic", "instance")
MAX_RESAMPLE = 4.0  # a frame is enlarged or shrunk at most 4x to reach the network's scale


@dataclass(frozen=True)
class PipelineSpec:
    """What a pipeline version is, beyond its network."""

    family: str = "semantic"
    architecture: str = ""
    description: str = ""
    tile_px: int = 512
    overlap_px: int = 64  # at least; instance: >= the largest loop's box, so each is whole in one tile
    threshold: float = 0.5  # semantic: on pixel probability; instance: on the detection score
    min_area_px: int = 12  # a loop of fewer pixels (at the network's scale) is dropped
    # A loop's contrast against the background around it, as a significance in noise sigmas
    # (loopstream.core.plausibility; 0 = no check), and its smallest major axis (network px).
    min_contrast: float = 6.0
    min_major_px: float = 4.0
    mask_threshold: float = 0.5  # instance: on the pasted mask probability (detectron2's value)
    nms_iou: float = 0.5  # instance: mask IoU above which two detections of a frame are one loop
    # Pixel size (nm/px) of the frames the network was trained at; a request that states its own
    # pixel size is resampled to it before tiling. null: frames are analysed as they come.
    pixel_nm: float | None = None
    # Frames are enlarged by this much more (after any resampling to pixel_nm) before tiling: a
    # network may find small loops better somewhat larger than it was trained at (chosen on
    # training images, models/MODEL_CARD.md). Loops come back in frame px either way.
    zoom: float = 1.0
    max_tiles_per_request: int = 4  # tiles per core request (instance networks take one)
    normalisation: str = "standardise"  # or "counts_8bit" for networks that normalise inside
    core_format: str = "onnx"  # or "torchscript": how the core network was exported
    # > 0: the multiple each side of the network's input must be (1: any size, as the shipped
    # U-Net's graph takes). Each side's tiles are then the fewest of at most tile_px overlapping
    # by at least overlap_px, each the smallest multiple of it that does
    # (``loopstream.core.imaging.tile_side``): a frame smaller than a tile is one tile, padded on
    # each side only to that multiple. 0: square tiles of tile_px.
    stride_px: int = 0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.zoom) and 1 / MAX_RESAMPLE <= self.zoom <= MAX_RESAMPLE):
            raise ValueError(f"zoom {self.zoom} must be between {1 / MAX_RESAMPLE:g} and {MAX_RESAMPLE:g}")
        if self.stride_px < 0 or (self.stride_px and self.tile_px % self.stride_px):
            raise ValueError(f"stride_px {self.stride_px} must be 0 or divide tile_px {self.tile_px}")
        if not 0 <= self.overlap_px < self.tile_px:
            raise ValueError(
                f"overlap_px {self.overlap_px} must be at least 0 and below tile_px {self.tile_px}"
            )
        if self.family not in FAMILIES:
            raise ValueError(f"unknown model family {self.family!r}; choose one of {FAMILIES}")
        if self.core_format not in CORE_FILES:
            raise ValueError(f"unknown core format {self.core_format!r}; choose one of {list(CORE_FILES)}")
        if self.normalisation not in NORMALISATIONS:
            raise ValueError(
                f"unknown normalisation {self.normalisation!r}; choose one of {list(NORMALISATIONS)}"
            )
        if self.pixel_nm is not None and not (math.isfinite(self.pixel_nm) and self.pixel_nm > 0):
            raise ValueError(
                f"pixel_nm is {self.pixel_nm} nm/px; give the positive pixel size the network was "
                "trained at, or null"
            )

    def resample_factor(self, frame_pixel_nm: float | None) -> float:
        """How much a frame of ``frame_pixel_nm`` is enlarged before tiling: to the network's pixel
        size (when both sizes are known), times ``zoom``. A size no pipeline should guess around is
        a FrameError."""
        if frame_pixel_nm is None or self.pixel_nm is None:
            return self.zoom
        if not (math.isfinite(frame_pixel_nm) and frame_pixel_nm > 0):
            raise FrameError(f"pixel size {frame_pixel_nm} nm/px: send a positive number of nm per px")
        factor = frame_pixel_nm / self.pixel_nm
        if not 1 / MAX_RESAMPLE <= factor <= MAX_RESAMPLE:
            raise FrameError(
                f"pixel size {frame_pixel_nm} nm/px is {factor:.3g}x the {self.pixel_nm} nm/px this "
                f"pipeline's network was trained at; the pipeline resamples by at most {MAX_RESAMPLE:g}x: "
                "check the session's pixel size or use a pipeline trained nearer this magnification"
            )
        return factor * self.zoom

    @classmethod
    def read(cls, path: Path) -> PipelineSpec:
        data = json.loads(Path(path).read_text())
        unknown = set(data) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"{path}: unknown pipeline settings {sorted(unknown)}")
        return cls(**data)

    def write(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=2) + "\n")
