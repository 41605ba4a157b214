"""Run a segmentation model on whole frames and turn its output into loops, as serving does.

The frame is standardised whole (``loopstream.core.imaging.standardise``), cut into overlapping tiles
of at most 512 px, run through the model, stitched, passed through a sigmoid and labelled with
``loopstream.core.ellipses``; evaluation, threshold tuning and tests therefore measure the same
pipeline Triton runs (``loopstream.serving.pipelines``). A model is either an exported ONNX file
(ONNX Runtime) or a training checkpoint (eager PyTorch), behind one call signature:
[N, 1, H, W] -> [N, 2, H, W].
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from loopstream.core.ellipses import detections_from_labels, labels_from_probability
from loopstream.core.imaging import cut_tiles, standardise, stitch, tile_grid
from loopstream.models.architectures import SIZE_MULTIPLE_PX, build_model

TILE_PX = 512  # serving tile size
OVERLAP_PX = 64
# Chosen on the 9 creme training images (evaluate --tune-ids), never on held-out 3, 7, 11; the
# shipped model counts simulated loops within ~6 % at it (models/MODEL_CARD.md).
DEFAULT_THRESHOLD = 0.3

LogitsFn = Callable[[np.ndarray], np.ndarray]


def load_checkpoint_model(path: str | Path) -> torch.nn.Module:
    """The eager model of a training checkpoint (``last.pt``), in eval mode."""
    state = torch.load(path, map_location="cpu", weights_only=False)
    model = build_model(state["arch"])
    model.load_state_dict(state["model"])
    return model.eval()


def torch_logits(model: torch.nn.Module) -> LogitsFn:
    def run(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return model(torch.from_numpy(x)).numpy()

    return run


def onnx_logits(path: str | Path, threads: int = 2) -> LogitsFn:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return lambda x: session.run(["logits"], {"image": x})[0]


def load_logits_fn(path: str | Path, threads: int = 2) -> LogitsFn:
    """ONNX Runtime for ``*.onnx``, eager PyTorch for a checkpoint."""
    if Path(path).suffix == ".onnx":
        return onnx_logits(path, threads)
    torch.set_num_threads(threads)
    return torch_logits(load_checkpoint_model(path))


def frame_probabilities(logits_fn: LogitsFn, frame: np.ndarray) -> np.ndarray:
    """[2, H, W] foreground and core probabilities of a raw frame of any size."""
    h, w = frame.shape
    tile_px = min(TILE_PX, -(-max(h, w) // SIZE_MULTIPLE_PX) * SIZE_MULTIPLE_PX)
    tiles = tile_grid((h, w), tile_px, OVERLAP_PX)
    logits = np.concatenate([logits_fn(t[None]) for t in cut_tiles(standardise(frame), tiles)])
    return 1.0 / (1.0 + np.exp(-stitch(logits, tiles, (h, w))))


@dataclass
class Prediction:
    probabilities: np.ndarray  # [2, H, W]
    labels: np.ndarray  # int32 [H, W], 0 = background
    detections: pd.DataFrame  # loopstream.core.detections.LOOP_COLUMNS


def label_probabilities(probabilities: np.ndarray, threshold: float, min_area_px: int = 12) -> Prediction:
    """Loops of a probability map at ``threshold`` (split for threshold sweeps without re-inference)."""
    labels = labels_from_probability(probabilities[0], probabilities[1], threshold, min_area_px)
    return Prediction(probabilities, labels, detections_from_labels(labels, probabilities[0]))
