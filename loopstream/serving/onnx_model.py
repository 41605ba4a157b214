"""ONNX Runtime sessions for the core models, shared by Triton's Python backend and in-process runs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort


class OnnxModel:
    """One ONNX model on the CPU with a fixed thread budget (Triton instances share the cores)."""

    def __init__(self, path: Path, intra_op_threads: int = 2) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = intra_op_threads
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """All outputs by name."""
        return dict(zip(self.output_names, self.session.run(self.output_names, inputs), strict=True))

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        """The first output for a single-input network: the common case of the semantic models."""
        return self.session.run(self.output_names[:1], {self.input_names[0]: batch})[0]
