"""A pipeline version: frame in, loop detections out, whatever the model family.

Both families cut the standardised frame into tiles, send them to their core network, and merge
the answers: the semantic family stitches probability maps and splits instances by watershed
(``loopstream.serving.semantic``); the instance family pastes per-tile instance masks and removes
duplicates across the frame (``loopstream.serving.instance_merge``). Both then drop the detections
no loop could make (``loopstream.core.plausibility``: a hot pixel, a blob of noise). A request may
state the frame's pixel size (nm/px): the frame is then resampled to the pixel size the network
was trained at (``PipelineSpec.pixel_nm``) before tiling, and the loops are mapped back to frame
px, so a binned camera sees the same loops in nm. Triton's glue
(``backends/pipeline.py``) and in-process runs (benchmarks, evaluation, tests) use this same code.

Examples
--------
>>> import numpy as np
>>> pipeline = Pipeline(PipelineSpec(tile_px=256, overlap_px=32, pixel_nm=0.5))
>>> prepared = pipeline.prepare(np.zeros((150, 200), np.uint16), pixel_nm=1.0)  # 2x binned
>>> prepared.shape, [batch["image"].shape for batch in pipeline.core_inputs(prepared)]
((300, 400), [(4, 1, 256, 256)])
>>> logits = {"logits": np.full((4, 2, 256, 256), -5.0, np.float32)}
>>> detections, masks = pipeline.finish([logits], prepared, with_masks=True)
>>> len(detections), len(masks)
(0, 0)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np
import pandas as pd

from loopstream.core.masks import MaskCrop
from loopstream.core.plausibility import plausible_loops
from loopstream.serving import instance_merge, semantic
from loopstream.serving.core_models import CORE_TENSORS, CoreTensors
from loopstream.serving.frames import PreparedFrame, prepare_frame
from loopstream.serving.spec import PipelineSpec

CENTRE_COLUMNS = ["x_px", "y_px"]  # pixel-index coordinates (a pixel's centre is its index)
LENGTH_COLUMNS = ["major_px", "minor_px", "bbox_x_px", "bbox_y_px", "bbox_width_px", "bbox_height_px"]

CoreFn = Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]


@dataclass(frozen=True)
class Pipeline:
    spec: PipelineSpec

    @property
    def tensors(self) -> CoreTensors:
        """The core network's tensor names."""
        return CORE_TENSORS[self.spec.core_format, self.spec.family]

    @property
    def tiles_per_request(self) -> int:
        """Instance networks exported to ONNX take one tile (batch 1); the others take a few."""
        one_tile = self.spec.family == "instance" and self.spec.core_format == "onnx"
        return 1 if one_tile else self.spec.max_tiles_per_request

    def prepare(self, frame: np.ndarray, pixel_nm: float | None = None) -> PreparedFrame:
        """The frame's tiles, at the network's pixel size when ``pixel_nm`` (the frame's) is given."""
        s = self.spec
        return prepare_frame(
            frame,
            s.tile_px,
            s.overlap_px,
            s.normalisation,
            scale=s.resample_factor(pixel_nm),
            stride_px=s.stride_px,
        )

    def core_inputs(self, prepared: PreparedFrame) -> list[dict[str, np.ndarray]]:
        """The core requests of a frame: its tiles, a few per request."""
        tiles, step = prepared.tiles_input, self.tiles_per_request
        return [{self.tensors.input: tiles[i : i + step]} for i in range(0, len(tiles), step)]

    def finish(
        self, outputs: list[dict[str, np.ndarray]], prepared: PreparedFrame, with_masks: bool = False
    ) -> tuple[pd.DataFrame, list[MaskCrop]]:
        """Detections (``loopstream.core.detections.LOOP_COLUMNS``, frame px) from the core answers
        (in request order), and, when asked, each loop's mask within its box, row for row."""
        if self.spec.family == "semantic":
            logits = [tile for o in outputs for tile in o[self.tensors.outputs[0]]]
            detections, masks = semantic.finish_frame(logits, prepared, self.spec, with_masks)
        else:
            tiles = [tile for o in outputs for tile in self._tile_detections(o)]
            loops = instance_merge.frame_instances(tiles, prepared, self.spec)
            masks = [MaskCrop(i.x0, i.y0, i.mask) for i in loops] if with_masks else []
            detections = instance_merge.detections_from_instances(loops)
        keep = plausible_loops(detections, prepared.image, self.spec.min_contrast, self.spec.min_major_px)
        detections = detections[keep].reset_index(drop=True)
        masks = [m for m, k in zip(masks, keep, strict=True) if k] if with_masks else []
        if prepared.scale == 1.0:
            return detections, masks
        return to_frame_px(detections, prepared.scale), [to_frame_mask(m, prepared) for m in masks]

    def _tile_detections(self, output: dict[str, np.ndarray]) -> list[instance_merge.TileDetections]:
        """The detections of each tile of one instance core answer."""
        if self.spec.core_format == "onnx":
            return [instance_merge.TileDetections.from_outputs(output)]
        boxes, scores, masks, counts = (output[name] for name in self.tensors.outputs)
        return [
            instance_merge.TileDetections(boxes[i, :k], scores[i, :k], masks[i, :k])
            for i, k in enumerate(counts.reshape(-1).tolist())
        ]

    def analyse(self, frame: np.ndarray, core: CoreFn, pixel_nm: float | None = None) -> pd.DataFrame:
        """Detections of a frame with a synchronous core call: what Triton's glue computes,
        in-process (benchmarks, tests; evaluation keeps the core answers to sweep thresholds)."""
        prepared = self.prepare(frame, pixel_nm)
        return self.finish([core(inputs) for inputs in self.core_inputs(prepared)], prepared)[0]


def to_frame_px(detections: pd.DataFrame, scale: float) -> pd.DataFrame:
    """Detections measured on a frame resampled by ``scale``, in the original frame's px (centres
    under OpenCV's resampling convention: pixel centres map to pixel centres)."""
    out = detections.copy()
    out[CENTRE_COLUMNS] = (out[CENTRE_COLUMNS] + np.float32(0.5)) / np.float32(scale) - np.float32(0.5)
    out[LENGTH_COLUMNS] /= np.float32(scale)
    out["area_px"] /= np.float32(scale * scale)
    return out


def to_frame_mask(crop: MaskCrop, prepared: PreparedFrame) -> MaskCrop:
    """A loop's mask on the resampled frame, resampled back onto the frame's own pixel grid."""
    h, w = prepared.frame_shape
    x0, y0 = min(int(crop.x0 / prepared.scale), w - 1), min(int(crop.y0 / prepared.scale), h - 1)
    x1 = min(max(round((crop.x0 + crop.mask.shape[1]) / prepared.scale), x0 + 1), w)
    y1 = min(max(round((crop.y0 + crop.mask.shape[0]) / prepared.scale), y0 + 1), h)
    mask = cv2.resize(crop.mask.astype(np.uint8), (x1 - x0, y1 - y0), interpolation=cv2.INTER_NEAREST)
    return MaskCrop(x0, y0, mask.astype(bool))
