"""TorchScript networks hosted in the Triton pipelines beside ONNX ones, in one real tritonserver.

The same randomly initialised weights of each family are exported to ONNX and to TorchScript and
added as two pipelines (``loopstream-repository`` code, local flavour). Served TorchScript must give
what the same TorchScript file gives in-process through the same pipeline code, and the semantic
pipeline must find the same loops from either export. A 448 px frame with 256 px tiles is four
tiles: one TorchScript request, so in-process and served runs see the same batch.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
import tritonclient.grpc as triton

from loopstream.core.simulator import SimulatedMicroscope, SimulationConfig
from loopstream.models import export, export_instance
from loopstream.models.architectures import build_model
from loopstream.models.export_torchscript import export_torchscript
from loopstream.models.maskrcnn import build_maskrcnn
from loopstream.serving.core_models import OnnxModel, TorchScriptModel
from loopstream.serving.pipelines import Pipeline, PipelineSpec
from loopstream.serving.repository import add_version
from loopstream.serving.triton import TritonOptions, TritonPorts, start_triton

FRAME = SimulatedMicroscope(SimulationConfig(shape=(448, 448)), seed=5).render(0)
SEMANTIC = PipelineSpec(family="semantic", tile_px=256, overlap_px=32)
INSTANCE = PipelineSpec(family="instance", tile_px=256, overlap_px=32, threshold=0.3)


def _semantic_threshold(model: OnnxModel) -> float:
    """The median foreground probability of the frame: random weights answer ~0.5 everywhere, so
    a fixed threshold would make the frame all loop or all background."""
    prepared = Pipeline(SEMANTIC).prepare(FRAME)
    logits = model(prepared.tiles_input)
    return float(np.median(1 / (1 + np.exp(-logits[:, 0]))))


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("torchscript")
    torch.manual_seed(0)
    unet = build_model("unet_r18").eval()
    maskrcnn = build_maskrcnn("maskrcnn_r18", detections_per_image=24).eval()
    files = {
        "semantic_onnx": export.export_onnx(unet, root / "unet.onnx"),
        "semantic_ts": export_torchscript("semantic", unet, root / "unet.pt"),
        "instance_ts": export_torchscript("instance", maskrcnn, root / "maskrcnn.pt"),
        "instance_onnx": export_instance.export_onnx(maskrcnn, root / "maskrcnn.onnx", example_px=128),
    }
    semantic = replace(SEMANTIC, threshold=_semantic_threshold(OnnxModel(files["semantic_onnx"])))
    specs = {
        "semantic_onnx": semantic,
        "semantic_ts": semantic,
        "instance_ts": INSTANCE,
        "instance_onnx": INSTANCE,
    }
    repository = root / "repository"
    for name, spec in specs.items():
        add_version(repository, name, spec, files[name])
    options = TritonOptions(repository=repository, ports=TritonPorts.ephemeral())
    process = start_triton(options, root / "cache", root / "tritonserver.log")
    yield options, files, {n: PipelineSpec.read(repository / n / "1" / "pipeline.json") for n in specs}
    process.stop()


def _infer(url: str, pipeline: str) -> np.ndarray:
    with triton.InferenceServerClient(url) as client:
        tensor = triton.InferInput("FRAME_U16", FRAME.shape, "UINT16")
        tensor.set_data_from_numpy(FRAME)
        return client.infer(pipeline, [tensor]).as_numpy("DETECTIONS")


def test_repository_records_each_core_format(served) -> None:
    options, _, specs = served
    assert {n: s.core_format for n, s in specs.items()} == {
        "semantic_onnx": "onnx",
        "semantic_ts": "torchscript",
        "instance_ts": "torchscript",
        "instance_onnx": "onnx",
    }
    assert (options.repository / "semantic_ts_core" / "1" / "model.pt").exists()
    assert not (options.repository / "semantic_ts_core" / "1" / "model.onnx").exists()


@pytest.mark.parametrize("pipeline", ["semantic_ts", "instance_ts"])
def test_served_torchscript_gives_what_it_gives_in_process(served, pipeline: str) -> None:
    options, files, specs = served
    answer = _infer(f"127.0.0.1:{options.ports.grpc}", pipeline)
    expected = Pipeline(specs[pipeline]).analyse(FRAME, TorchScriptModel(files[pipeline]).run)
    assert len(expected) > 0, "the test needs loops to compare"
    np.testing.assert_allclose(answer, expected.to_numpy(np.float32), rtol=1e-4, atol=1e-3)


def test_semantic_loops_agree_between_onnx_and_torchscript(served) -> None:
    options, _, _ = served
    url = f"127.0.0.1:{options.ports.grpc}"
    onnx, ts = _infer(url, "semantic_onnx"), _infer(url, "semantic_ts")
    assert len(onnx) > 0 and len(ts) == len(onnx)
    order = [np.lexsort((d[:, 2], d[:, 1])) for d in (onnx, ts)]  # by x, then y
    np.testing.assert_allclose(ts[order[1], 1:7], onnx[order[0], 1:7], atol=0.05, rtol=1e-3)


def test_instance_loops_agree_between_onnx_and_torchscript(served) -> None:
    options, _, _ = served
    url = f"127.0.0.1:{options.ports.grpc}"
    onnx, ts = _infer(url, "instance_onnx"), _infer(url, "instance_ts")
    assert len(onnx) > 0 and len(ts) == len(onnx)
    order = [np.argsort(-d[:, 0], kind="stable") for d in (onnx, ts)]  # by score
    np.testing.assert_allclose(ts[order[1], :7], onnx[order[0], :7], atol=0.05, rtol=1e-3)
