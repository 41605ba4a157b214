"""Triton glue of a core network on the local (CPU) flavour: ONNX Runtime or TorchScript in the
Python backend, whichever file the version holds (``loopstream.serving.core_models``).

Linked by the repository builder as ``<pipeline>_core/<version>/model.py`` beside ``model.onnx`` or
``model.pt``. (The GPU flavour serves the same file with Triton's native onnxruntime or
pytorch_libtorch backend.) Inputs and outputs keep the network's own names, so one glue serves
every network.
"""

import json
import os
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

from loopstream.serving.core_models import open_core


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        parameters = {k: v["string_value"] for k, v in config["parameters"].items()}
        version_dir = Path(args["model_repository"]) / args["model_version"]
        threads = os.environ.get("LOOPSTREAM_ORT_THREADS") or parameters["intra_op_threads"]
        self.model = open_core(version_dir, intra_op_threads=int(threads))
        self.batched = config["max_batch_size"] > 0

    def execute(self, requests):
        inputs = [self._inputs(r) for r in requests]
        if not self.batched or len(requests) == 1:
            return [self._respond(self.model.run(i)) for i in inputs]
        # Dynamic batching hands over N requests unstacked: concatenate, run once, split.
        if len({tuple(a.shape[1:] for a in i.values()) for i in inputs}) > 1:
            return [self._respond(self.model.run(i)) for i in inputs]  # mixed tile sizes
        stacked = {name: np.concatenate([i[name] for i in inputs]) for name in inputs[0]}
        outputs = self.model.run(stacked)
        splits = np.cumsum([len(next(iter(i.values()))) for i in inputs])[:-1]
        parts = {name: np.split(value, splits) for name, value in outputs.items()}
        return [self._respond({name: p[k] for name, p in parts.items()}) for k in range(len(requests))]

    def _inputs(self, request):
        return {
            name: pb_utils.get_input_tensor_by_name(request, name).as_numpy()
            for name in self.model.input_names
        }

    @staticmethod
    def _respond(outputs):
        tensors = [pb_utils.Tensor(name, np.ascontiguousarray(value)) for name, value in outputs.items()]
        return pb_utils.InferenceResponse(tensors)
