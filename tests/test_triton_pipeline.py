"""The semantic pipeline served by a real tritonserver: same loops as in-process, errors, batching."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import tritonclient.grpc as triton
from tritonclient.utils import InferenceServerException

from loopstream.client.shadow import agreement
from loopstream.core.masks import decode_mask
from loopstream.core.simulator import SimulatedMicroscope, SimulationConfig
from loopstream.dev.stack import LocalStack
from loopstream.serving.core_models import OnnxModel
from loopstream.serving.pipelines import Pipeline, PipelineSpec
from loopstream.serving.triton import REPOSITORY
from tests.conftest import CORE_MODEL, default_version

PIPELINE = "loops_semantic"
SHIPPED = Pipeline(PipelineSpec.read(REPOSITORY / PIPELINE / default_version(PIPELINE) / "pipeline.json"))
INSTANCE = "loops_instance"
INSTANCE_DEFAULT = default_version(INSTANCE)


INPUTS = {"uint8": ("FRAME_U8", "UINT8"), "uint16": ("FRAME_U16", "UINT16")}


def _infer(client: triton.InferenceServerClient, frame: np.ndarray, model: str = PIPELINE) -> np.ndarray:
    name, datatype = INPUTS[frame.dtype.name]
    tensor = triton.InferInput(name, frame.shape, datatype)
    tensor.set_data_from_numpy(frame)
    return client.infer(model, [tensor]).as_numpy("DETECTIONS")


@pytest.fixture(scope="module")
def client(stack: LocalStack):
    with triton.InferenceServerClient(stack.triton_url) as c:
        yield c


@pytest.mark.parametrize(("size", "dtype"), [(512, "uint16"), (1000, "uint8")])
def test_served_pipeline_finds_the_same_loops_as_in_process(client, size: int, dtype: str) -> None:
    frame = SimulatedMicroscope(SimulationConfig(shape=(size, size), dtype=dtype), seed=size).render(3)
    served = _infer(client, frame)
    local = SHIPPED.analyse(frame, OnnxModel(CORE_MODEL).run).to_numpy(np.float32)
    assert len(served) > 0
    assert served.shape == local.shape
    np.testing.assert_allclose(served[:, 1:3], local[:, 1:3], atol=0.05)  # centres, px


def test_a_2048_px_frame_tiled_in_triton_gives_the_loops_of_the_untiled_frame(client) -> None:
    """Tiles, stitching and seams lose, cut and double no loop: compare with one untiled run."""
    frame = SimulatedMicroscope(SimulationConfig(shape=(2048, 2048), initial_loops=16), seed=2048).render(0)
    served = _infer(client, frame)
    untiled_spec = PipelineSpec(**{**SHIPPED.spec.__dict__, "tile_px": 2048})
    untiled = Pipeline(untiled_spec).analyse(frame, OnnxModel(CORE_MODEL).run).to_numpy(np.float32)
    assert len(untiled) > 100
    match = agreement(untiled, served)
    assert match.f1 >= 0.98, f"{match}"
    assert abs(len(served) - len(untiled)) <= 0.01 * len(untiled), "loops doubled or lost at tile borders"


@pytest.mark.parametrize("model", [PIPELINE, INSTANCE])
def test_masks_come_run_length_encoded_only_when_asked_for(client, model: str) -> None:
    frame = SimulatedMicroscope(SimulationConfig(shape=(512, 512)), seed=12).render(0)
    tensor = triton.InferInput("FRAME_U16", frame.shape, "UINT16")
    tensor.set_data_from_numpy(frame)
    plain = client.infer(model, [tensor], outputs=[triton.InferRequestedOutput("DETECTIONS")])
    assert plain.as_numpy("MASKS_RLE") is None
    result = client.infer(model, [tensor])  # no outputs named: all of them, masks included
    detections, encoded = result.as_numpy("DETECTIONS"), result.as_numpy("MASKS_RLE")
    assert len(detections) > 0 and len(encoded) == len(detections)
    for row, blob in zip(detections, encoded, strict=True):
        mask = decode_mask(blob, frame.shape)
        ys, xs = np.nonzero(mask)
        assert mask.sum() == row[6], "mask area = the detection's area_px"
        assert (xs.min(), ys.min()) == (row[7], row[8]), "mask starts at the detection's bbox"
        assert abs(xs.mean() - row[1]) < 2 and abs(ys.mean() - row[2]) < 2


def test_served_instance_pipeline_finds_the_same_loops_as_in_process(client) -> None:
    frame = SimulatedMicroscope(SimulationConfig(shape=(600, 700)), seed=4).render(2)
    served = _infer(client, frame, INSTANCE)
    pipeline = Pipeline(PipelineSpec.read(REPOSITORY / INSTANCE / INSTANCE_DEFAULT / "pipeline.json"))
    network = OnnxModel(REPOSITORY / f"{INSTANCE}_core" / INSTANCE_DEFAULT / "model.onnx")
    local = pipeline.analyse(frame, network.run)
    assert len(served) > 0
    assert served.shape == local.shape
    np.testing.assert_allclose(served[:, 1:3], local.to_numpy(np.float32)[:, 1:3], atol=0.05)


@pytest.mark.parametrize(
    ("frame", "input_name", "datatype", "message"),
    [
        (np.zeros((4, 64, 64), np.uint16), "FRAME_U16", "UINT16", "unexpected shape"),
        (np.zeros((64, 64), np.float32), "FRAME_U16", "FP32", "expects 'UINT16'"),
        (np.zeros((8, 8), np.uint16), "FRAME_U16", "UINT16", "between 32 and 4096 px"),
        (np.zeros((4100, 40), np.uint8), "FRAME_U8", "UINT8", "between 32 and 4096 px"),
    ],
)
def test_bad_frames_are_invalid_arguments_and_the_server_keeps_serving(
    client, frame: np.ndarray, input_name: str, datatype: str, message: str
) -> None:
    tensor = triton.InferInput(input_name, frame.shape, datatype)
    tensor.set_data_from_numpy(frame)
    with pytest.raises(InferenceServerException) as error:
        client.infer(PIPELINE, [tensor])
    assert error.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert message in error.value.message()
    good = SimulatedMicroscope(SimulationConfig(shape=(256, 256)), seed=1).render(0)
    assert _infer(client, good).shape[1] == 11


def test_a_request_without_a_frame_is_rejected(client) -> None:
    with pytest.raises(InferenceServerException, match="exactly one of the inputs"):
        client.infer(PIPELINE, [])


def test_concurrent_microscopes_share_core_model_batches(stack: LocalStack, client) -> None:
    before = client.get_inference_statistics("loops_semantic_core", default_version(PIPELINE)).model_stats[0]
    frames = [SimulatedMicroscope(SimulationConfig(shape=(256, 256)), seed=s).render(0) for s in range(4)]
    errors: list[Exception] = []

    def microscope(frame: np.ndarray) -> None:
        with triton.InferenceServerClient(stack.triton_url) as own:
            for _ in range(4):
                try:
                    _infer(own, frame)
                except Exception as exc:  # collected: a thread's exception would be lost
                    errors.append(exc)

    threads = [threading.Thread(target=microscope, args=(f,)) for f in frames]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    after = client.get_inference_statistics("loops_semantic_core", default_version(PIPELINE)).model_stats[0]
    inferences = after.inference_count - before.inference_count
    executions = after.execution_count - before.execution_count
    assert inferences == 16
    assert executions < inferences, "dynamic batching should merge tiles of different microscopes"
