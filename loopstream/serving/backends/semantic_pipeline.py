"""Triton glue of a semantic pipeline version; the logic lives in loopstream.serving.semantic.

Copied by the repository builder to ``<pipeline>/<version>/model.py``. Settings come from the
version's ``pipeline.json``; the core model is called at the same version number, so versions
of a pipeline are whole (network + post-processing) and can be served side by side.
"""

import asyncio
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

from loopstream.serving.repository import PipelineSpec
from loopstream.serving.semantic import FrameError, finish_frame, prepare_frame


class TritonPythonModel:
    def initialize(self, args):
        version_dir = Path(args["model_repository"]) / args["model_version"]
        self.spec = PipelineSpec.read(version_dir / "pipeline.json")
        self.config = self.spec.pipeline_config()
        self.core_model = f"{args['model_name']}_core"
        self.core_version = int(args["model_version"])

    async def execute(self, requests):
        return list(await asyncio.gather(*(self._analyse(request) for request in requests)))

    async def _analyse(self, request):
        try:
            prepared = prepare_frame(_frame_of(request), self.config)
        except FrameError as exc:
            return pb_utils.InferenceResponse(
                error=pb_utils.TritonError(str(exc), pb_utils.TritonError.INVALID_ARG)
            )
        tiles = prepared.tiles_input
        step = self.spec.max_tiles_per_request
        replies = await asyncio.gather(
            *(self._infer_core(tiles[i : i + step]) for i in range(0, len(tiles), step))
        )
        for reply in replies:
            if reply.has_error():
                return pb_utils.InferenceResponse(error=reply.error())
        logits = np.concatenate([pb_utils.get_output_tensor_by_name(r, "logits").as_numpy() for r in replies])
        detections = finish_frame(logits, prepared, self.config).to_numpy(np.float32)
        return pb_utils.InferenceResponse([pb_utils.Tensor("DETECTIONS", detections)])

    def _infer_core(self, chunk):
        return pb_utils.InferenceRequest(
            model_name=self.core_model,
            model_version=self.core_version,
            requested_output_names=["logits"],
            inputs=[pb_utils.Tensor("image", chunk)],
        ).async_exec()


def _frame_of(request):
    """The one frame of a request, from whichever of FRAME_U8 / FRAME_U16 it carries."""
    tensors = [pb_utils.get_input_tensor_by_name(request, name) for name in ("FRAME_U8", "FRAME_U16")]
    given = [t for t in tensors if t is not None]
    if len(given) != 1:
        raise FrameError("send exactly one of the inputs FRAME_U8 (uint8 frame) or FRAME_U16 (uint16 frame)")
    return given[0].as_numpy()
