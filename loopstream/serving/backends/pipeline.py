"""Triton glue of a pipeline version; the logic lives in loopstream.serving.pipelines.

Linked by the repository builder as ``<pipeline>/<version>/model.py``. Settings come from the
version's ``pipeline.json``; the core network is called at the same version number, so versions
of a pipeline are whole (network + post-processing) and can be served side by side. The core
requests of a frame go out concurrently, so Triton batches them with other frames' tiles (or, for
networks exported with batch 1, runs them on parallel instances). A request may carry the
parameter ``pixel_nm`` (the frame's pixel size, set by the client from its session): the pipeline
then analyses the frame at its network's pixel size (``PipelineSpec.pixel_nm``).
"""

import asyncio
import json
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

from loopstream.core.masks import encode_mask
from loopstream.serving.frames import FrameError, select_frame
from loopstream.serving.pipelines import Pipeline, PipelineSpec


class TritonPythonModel:
    def initialize(self, args):
        version_dir = Path(args["model_repository"]) / args["model_version"]
        self.pipeline = Pipeline(PipelineSpec.read(version_dir / "pipeline.json"))
        self.core_model = f"{args['model_name']}_core"
        self.core_version = int(args["model_version"])

    async def execute(self, requests):
        return list(await asyncio.gather(*(self._analyse(request) for request in requests)))

    async def _analyse(self, request):
        try:
            given = [pb_utils.get_input_tensor_by_name(request, n) for n in ("FRAME_U8", "FRAME_U16")]
            frame = select_frame(*(None if t is None else t.as_numpy() for t in given))
            prepared = self.pipeline.prepare(frame, request_pixel_nm(request))
        except FrameError as exc:
            return pb_utils.InferenceResponse(
                error=pb_utils.TritonError(str(exc), pb_utils.TritonError.INVALID_ARG)
            )
        batches = self.pipeline.core_inputs(prepared)
        replies = await asyncio.gather(*(self._infer_core(batch) for batch in batches))
        for reply in replies:
            if reply.has_error():
                return pb_utils.InferenceResponse(error=reply.error())
        outputs = [
            {
                name: pb_utils.get_output_tensor_by_name(r, name).as_numpy()
                for name in self.pipeline.tensors.outputs
            }
            for r in replies
        ]
        with_masks = "MASKS_RLE" in request.requested_output_names()  # only when asked: it costs work
        detections, masks = self.pipeline.finish(outputs, prepared, with_masks)
        tensors = [pb_utils.Tensor("DETECTIONS", detections.to_numpy(np.float32))]
        if with_masks:
            tensors.append(
                pb_utils.Tensor("MASKS_RLE", np.array([encode_mask(m) for m in masks], dtype=object))
            )
        return pb_utils.InferenceResponse(tensors)

    def _infer_core(self, inputs):
        return pb_utils.InferenceRequest(
            model_name=self.core_model,
            model_version=self.core_version,
            requested_output_names=list(self.pipeline.tensors.outputs),
            inputs=[pb_utils.Tensor(name, value) for name, value in inputs.items()],
        ).async_exec()


def request_pixel_nm(request) -> float | None:
    """The request's ``pixel_nm`` parameter (a number, in nm/px), or None when it has none."""
    value = json.loads(request.parameters() or "{}").get("pixel_nm")
    if value is None:
        return None
    try:
        return float(value)
    except (TypeError, ValueError) as exc:
        message = f"request parameter pixel_nm is {value!r}; send the pixel size as a number (nm/px)"
        raise FrameError(message) from exc
