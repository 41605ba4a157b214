"""A pipeline version: frame in, loop detections out, whatever the model family.

Both families cut the standardised frame into tiles, send them to their core network, and merge
the answers: the semantic family stitches probability maps and splits instances by watershed
(``loopstream.serving.semantic``); the instance family pastes per-tile instance masks and removes
duplicates across tiles (``loopstream.serving.instance_merge``). Both then drop the detections
no loop could make (``loopstream.core.plausibility``: a hot pixel, a blob of noise). Triton's glue
(``backends/pipeline.py``) and in-process runs (benchmarks, evaluation, tests) use this same code.

Examples
--------
>>> import numpy as np
>>> pipeline = Pipeline(PipelineSpec(tile_px=256, overlap_px=32))
>>> prepared = pipeline.prepare(np.zeros((300, 400), np.uint16))
>>> [batch["image"].shape for batch in pipeline.core_inputs(prepared)]
[(4, 1, 256, 256)]
>>> logits = {"logits": np.full((4, 2, 256, 256), -5.0, np.float32)}
>>> detections, masks = pipeline.finish([logits], prepared, with_masks=True)
>>> len(detections), len(masks)
(0, 0)
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import pandas as pd

from loopstream.core.masks import MaskCrop
from loopstream.core.plausibility import plausible_loops
from loopstream.serving import instance_merge, semantic
from loopstream.serving.core_models import CORE_FILES, CORE_TENSORS, CoreTensors
from loopstream.serving.frames import NORMALISATIONS, PreparedFrame, prepare_frame

FAMILIES = ("semantic", "instance")


@dataclass(frozen=True)
class PipelineSpec:
    """What a pipeline version is, beyond its network: stored as ``<pipeline>/<v>/pipeline.json``."""

    family: str = "semantic"
    architecture: str = ""
    description: str = ""
    tile_px: int = 512
    overlap_px: int = 64
    threshold: float = 0.5  # semantic: on pixel probability; instance: on the detection score
    min_area_px: int = 12
    # A loop's contrast against the background around it, as a significance in noise sigmas
    # (loopstream.core.plausibility; 0 = no check), and its smallest major axis.
    min_contrast: float = 6.0
    min_major_px: float = 4.0
    max_tiles_per_request: int = 4  # tiles per core request (instance networks take one)
    normalisation: str = "standardise"  # or "counts_8bit" for networks that normalise inside
    core_format: str = "onnx"  # or "torchscript": how the core network was exported
    # > 0 for fully convolutional networks (their stride): a frame smaller than a tile is one
    # tile of its longer side rounded up to it, so tiles as large as memory allows waste nothing.
    stride_px: int = 0

    def __post_init__(self) -> None:
        if self.stride_px < 0 or (self.stride_px and self.tile_px % self.stride_px):
            raise ValueError(f"stride_px {self.stride_px} must be 0 or divide tile_px {self.tile_px}")
        if self.family not in FAMILIES:
            raise ValueError(f"unknown model family {self.family!r}; choose one of {FAMILIES}")
        if self.core_format not in CORE_FILES:
            raise ValueError(f"unknown core format {self.core_format!r}; choose one of {list(CORE_FILES)}")
        if self.normalisation not in NORMALISATIONS:
            raise ValueError(
                f"unknown normalisation {self.normalisation!r}; choose one of {list(NORMALISATIONS)}"
            )

    @classmethod
    def read(cls, path: Path) -> PipelineSpec:
        data = json.loads(Path(path).read_text())
        unknown = set(data) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"{path}: unknown pipeline settings {sorted(unknown)}")
        return cls(**data)

    def write(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=2) + "\n")


@dataclass(frozen=True)
class Pipeline:
    spec: PipelineSpec

    @property
    def config(self) -> semantic.SemanticPipelineConfig | instance_merge.InstancePipelineConfig:
        s = self.spec
        if s.family == "semantic":
            return semantic.SemanticPipelineConfig(s.tile_px, s.overlap_px, s.threshold, s.min_area_px)
        return instance_merge.InstancePipelineConfig(
            tile_px=s.tile_px, overlap_px=s.overlap_px, score_threshold=s.threshold, min_area_px=s.min_area_px
        )

    @property
    def tensors(self) -> CoreTensors:
        """The core network's tensor names."""
        return CORE_TENSORS[self.spec.core_format, self.spec.family]

    @property
    def tiles_per_request(self) -> int:
        """Instance networks exported to ONNX take one tile (batch 1); the others take a few."""
        one_tile = self.spec.family == "instance" and self.spec.core_format == "onnx"
        return 1 if one_tile else self.spec.max_tiles_per_request

    def prepare(self, frame: np.ndarray) -> PreparedFrame:
        s = self.spec
        return prepare_frame(frame, s.tile_px, s.overlap_px, s.normalisation, s.stride_px)

    def core_inputs(self, prepared: PreparedFrame) -> list[dict[str, np.ndarray]]:
        """The core requests of a frame: its tiles, a few per request."""
        tiles, step = prepared.tiles_input, self.tiles_per_request
        return [{self.tensors.input: tiles[i : i + step]} for i in range(0, len(tiles), step)]

    def finish(
        self, outputs: list[dict[str, np.ndarray]], prepared: PreparedFrame, with_masks: bool = False
    ) -> tuple[pd.DataFrame, list[MaskCrop]]:
        """Detections (``loopstream.core.detections.LOOP_COLUMNS``) from the core answers (in
        request order), and, when asked, each loop's mask within its box, row for row."""
        if self.spec.family == "semantic":
            logits = [tile for o in outputs for tile in o[self.tensors.outputs[0]]]
            detections, masks = semantic.finish_frame(logits, prepared, self.config, with_masks)
        else:
            tiles = [tile for o in outputs for tile in self._tile_detections(o)]
            loops = instance_merge.frame_instances(tiles, prepared, self.config)
            masks = [MaskCrop(i.x0, i.y0, i.mask) for i in loops] if with_masks else []
            detections = instance_merge.detections_from_instances(loops)
        keep = plausible_loops(detections, prepared.image, self.spec.min_contrast, self.spec.min_major_px)
        kept_masks = [m for m, k in zip(masks, keep, strict=True) if k] if with_masks else []
        return detections[keep].reset_index(drop=True), kept_masks

    def _tile_detections(self, output: dict[str, np.ndarray]) -> list[instance_merge.TileDetections]:
        """The detections of each tile of one instance core answer."""
        if self.spec.core_format == "onnx":
            return [instance_merge.TileDetections.from_outputs(output)]
        boxes, scores, masks, counts = (output[name] for name in self.tensors.outputs)
        return [
            instance_merge.TileDetections(boxes[i, :k], scores[i, :k], masks[i, :k])
            for i, k in enumerate(counts.reshape(-1).tolist())
        ]

    def analyse(
        self, frame: np.ndarray, core: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]
    ) -> pd.DataFrame:
        """Detections of a frame with a synchronous core call (in-process use)."""
        prepared = self.prepare(frame)
        return self.finish([core(inputs) for inputs in self.core_inputs(prepared)], prepared)[0]
