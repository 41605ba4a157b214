"""Run a semantic network in-process, eagerly or with ONNX Runtime, behind one call signature.

[N, 1, H, W] standardised tiles -> [N, 2, H, W] logits: what exports are checked against (parity
tests) and benchmarked. Whole frames go through the served ``loopstream.serving.pipelines.Pipeline``,
never through a second tiling here.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from loopstream.models.architectures import build_model

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
