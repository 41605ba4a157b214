"""Detections no loop could make are dropped by both pipelines, in a real tritonserver.

Each pipeline is served twice on its shipped network: version 1 with the plausibility check off
(``min_contrast`` and ``min_major_px`` 0), version 2 as shipped. Pure noise and a frame with one
saturated pixel give loops without the check and none with it; the bundled real images keep
(nearly) all their loops.
"""

from __future__ import annotations

import dataclasses

import imageio.v3 as iio
import numpy as np
import pandas as pd
import pytest
import tritonclient.grpc as triton

from loopstream.core.plausibility import plausible_loops
from loopstream.serving.pipelines import PipelineSpec
from loopstream.serving.repository import add_version
from loopstream.serving.triton import REPOSITORY, TritonOptions, TritonPorts, start_triton
from tests.conftest import ROOT, default_version

PIPELINES = ("loops_semantic", "loops_instance")
SAMPLES = {n: ROOT / "loopstream" / "data" / "samples" / f"creme-ds25s-{n}.png" for n in (3, 7, 11)}
UNCHECKED, CHECKED = "1", "2"


def _frames_without_loops() -> dict[str, np.ndarray]:
    """Uniform noise; Gaussian noise with one saturated pixel; a flat frame with one saturated pixel."""
    rng = np.random.default_rng(7)
    noise = rng.integers(0, 256, (384, 384)).astype(np.uint8)
    hot = rng.normal(128, 20, (384, 384)).clip(0, 255).astype(np.uint8)
    hot[rng.integers(30, 350), rng.integers(30, 350)] = 255
    flat = np.full((256, 256), 1000, np.uint16)
    flat[128, 128] = 65535
    return {"noise": noise, "hot pixel in noise": hot, "hot pixel on flat": flat}


@pytest.fixture(scope="module")
def triton_server(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("plausibility")
    for pipeline in PIPELINES:
        shipped = default_version(pipeline)
        spec = PipelineSpec.read(REPOSITORY / pipeline / shipped / "pipeline.json")
        assert spec.min_contrast > 0 and spec.min_major_px > 0, "the shipped spec must check"
        network = REPOSITORY / f"{pipeline}_core" / shipped / "model.onnx"
        unchecked = dataclasses.replace(spec, min_contrast=0.0, min_major_px=0.0)
        add_version(root / "repository", pipeline, unchecked, network, int(UNCHECKED))
        add_version(root / "repository", pipeline, spec, network, int(CHECKED))
    options = TritonOptions(repository=root / "repository", ports=TritonPorts.ephemeral())
    server = start_triton(options, root / "cache", root / "tritonserver.log", timeout_s=300)
    try:
        yield f"127.0.0.1:{options.ports.grpc}"
    finally:
        server.stop()


def _loops(url: str, pipeline: str, version: str, frame: np.ndarray) -> np.ndarray:
    name, dtype = ("FRAME_U8", "UINT8") if frame.dtype == np.uint8 else ("FRAME_U16", "UINT16")
    with triton.InferenceServerClient(url) as client:
        tensor = triton.InferInput(name, list(frame.shape), dtype)
        tensor.set_data_from_numpy(frame)
        return client.infer(pipeline, [tensor], model_version=version).as_numpy("DETECTIONS")


@pytest.mark.parametrize("pipeline", PIPELINES)
def test_noise_and_a_saturated_pixel_give_no_loop(triton_server: str, pipeline: str) -> None:
    unchecked = {}
    for what, frame in _frames_without_loops().items():
        assert len(_loops(triton_server, pipeline, CHECKED, frame)) == 0, f"{pipeline} found loops in {what}"
        unchecked[what] = len(_loops(triton_server, pipeline, UNCHECKED, frame))
    assert sum(unchecked.values()) > 0, f"the network finds no false loop here even unchecked: {unchecked}"


@pytest.mark.parametrize("pipeline", PIPELINES)
def test_real_images_keep_their_loops(
    triton_server: str, pipeline: str, capsys: pytest.CaptureFixture
) -> None:
    before = after = 0
    for n, path in SAMPLES.items():
        image = iio.imread(path)
        frame = image if image.ndim == 2 else image[..., 0]
        unchecked, checked = (_loops(triton_server, pipeline, v, frame) for v in (UNCHECKED, CHECKED))
        assert all(any(np.allclose(row, other) for other in unchecked) for row in checked), (
            "the check only drops detections, it changes none"
        )
        before, after = before + len(unchecked), after + len(checked)
        with capsys.disabled():
            print(f"\n{pipeline} creme-ds25s-{n}: {len(unchecked)} loops unchecked -> {len(checked)} checked")
    assert after >= 0.85 * before, f"{pipeline}: {before} loops -> {after} with the check"


def test_a_loop_spanning_too_few_pixels_is_dropped() -> None:
    rng = np.random.default_rng(1)
    image = rng.normal(0.0, 1.0, (64, 64)).astype(np.float32)
    image[30:33, 30:33] -= 6.0  # deep, but 3 px across
    row = {"score": 0.9, "x_px": 31.0, "y_px": 31.0, "major_px": 3.0, "minor_px": 3.0, "angle_deg": 0.0}
    row |= {"area_px": 9.0, "bbox_x_px": 30.0, "bbox_y_px": 30.0, "bbox_width_px": 3.0, "bbox_height_px": 3.0}
    detections = pd.DataFrame([row])
    assert plausible_loops(detections, image, min_contrast=6.0, min_major_px=0.0).tolist() == [True]
    assert plausible_loops(detections, image, min_contrast=6.0, min_major_px=4.0).tolist() == [False]
