"""Triton glue of a core network on the local (CPU) flavour: ONNX Runtime in the Python backend.

Copied by the repository builder to ``<pipeline>_core/<version>/model.py`` beside ``model.onnx``.
(The GPU flavour serves the same ``model.onnx`` with Triton's native onnxruntime backend.)
"""

import json
import os
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

from loopstream.serving.onnx_model import OnnxModel


class TritonPythonModel:
    def initialize(self, args):
        parameters = {k: v["string_value"] for k, v in json.loads(args["model_config"])["parameters"].items()}
        path = Path(args["model_repository"]) / args["model_version"] / "model.onnx"
        threads = os.environ.get("LOOPSTREAM_ORT_THREADS") or parameters["intra_op_threads"]
        self.model = OnnxModel(path, intra_op_threads=int(threads))

    def execute(self, requests):
        # The Python backend hands over N requests unstacked: concatenate, run once, split.
        images = [pb_utils.get_input_tensor_by_name(r, "image").as_numpy() for r in requests]
        if len({image.shape[1:] for image in images}) > 1:  # tiles of mixed sizes: one run each
            return [self._respond(self.model(image)) for image in images]
        logits = self.model(np.concatenate(images))
        splits = np.cumsum([len(image) for image in images])[:-1]
        return [self._respond(part) for part in np.split(logits, splits)]

    @staticmethod
    def _respond(logits):
        return pb_utils.InferenceResponse([pb_utils.Tensor("logits", np.ascontiguousarray(logits))])
