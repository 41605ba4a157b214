"""Triton glue of the semantic pipeline; the logic lives in loopstream.serving.semantic."""

import asyncio
import json

import numpy as np
import triton_python_backend_utils as pb_utils

from loopstream.serving.semantic import FrameError, SemanticPipelineConfig, finish_frame, prepare_frame


class TritonPythonModel:
    def initialize(self, args):
        parameters = {k: v["string_value"] for k, v in json.loads(args["model_config"])["parameters"].items()}
        self.core_model = parameters["core_model"]
        self.max_tiles = int(parameters["max_tiles_per_request"])
        self.config = SemanticPipelineConfig(
            tile_px=int(parameters["tile_px"]),
            overlap_px=int(parameters["overlap_px"]),
            threshold=float(parameters["threshold"]),
            min_area_px=int(parameters["min_area_px"]),
        )

    async def execute(self, requests):
        return list(await asyncio.gather(*(self._analyse(request) for request in requests)))

    async def _analyse(self, request):
        try:
            frame = _frame_of(request)
            prepared = prepare_frame(frame, self.config)
        except FrameError as exc:
            return pb_utils.InferenceResponse(
                error=pb_utils.TritonError(str(exc), pb_utils.TritonError.INVALID_ARG)
            )
        tiles = prepared.tiles_input
        chunks = [tiles[i : i + self.max_tiles] for i in range(0, len(tiles), self.max_tiles)]
        replies = await asyncio.gather(*(self._infer_core(chunk) for chunk in chunks))
        for reply in replies:
            if reply.has_error():
                return pb_utils.InferenceResponse(error=reply.error())
        logits = np.concatenate([pb_utils.get_output_tensor_by_name(r, "LOGITS").as_numpy() for r in replies])
        detections = finish_frame(logits, prepared, self.config).to_numpy(np.float32)
        return pb_utils.InferenceResponse([pb_utils.Tensor("DETECTIONS", detections)])

    def _infer_core(self, chunk):
        return pb_utils.InferenceRequest(
            model_name=self.core_model,
            requested_output_names=["LOGITS"],
            inputs=[pb_utils.Tensor("IMAGE", chunk)],
        ).async_exec()


def _frame_of(request):
    """The one frame of a request, from whichever of FRAME_U8 / FRAME_U16 it carries."""
    tensors = [pb_utils.get_input_tensor_by_name(request, name) for name in ("FRAME_U8", "FRAME_U16")]
    given = [t for t in tensors if t is not None]
    if len(given) != 1:
        raise FrameError("send exactly one of the inputs FRAME_U8 (uint8 frame) or FRAME_U16 (uint16 frame)")
    return given[0].as_numpy()
