"""Two versions of a pipeline side by side, changed at run time without a restart."""

from __future__ import annotations

import threading
import urllib.request

import numpy as np
import pytest
import tritonclient.grpc as triton

from loopstream.core.simulator import SimulatedMicroscope, SimulationConfig
from loopstream.serving.core_models import OnnxModel
from loopstream.serving.pipelines import Pipeline
from loopstream.serving.triton import TritonOptions, TritonPorts, start_triton
from loopstream.serving.versions import ready_versions, serve_versions
from tests.conftest import SEMANTIC_V1_ONNX, differing_versions, infer_detections, write_versions

PIPELINE = "loops_semantic"
SPECS = differing_versions(min_area_px=300)


@pytest.fixture(scope="module")
def triton_server(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("versions")
    options = TritonOptions(
        repository=write_versions(root, SPECS),
        ports=TritonPorts.ephemeral(),
        model_control="explicit",
        load_models=(f"{PIPELINE}_core", PIPELINE),
    )
    process = start_triton(options, root / "cache", root / "tritonserver.log")
    yield options
    process.stop()


def _infer(url: str, frame: np.ndarray, version: str) -> np.ndarray:
    return infer_detections(url, PIPELINE, frame, version)


FRAME = SimulatedMicroscope(SimulationConfig(shape=(512, 512)), seed=9).render(0)


def test_each_version_answers_requests_addressed_to_it(triton_server: TritonOptions) -> None:
    url = f"127.0.0.1:{triton_server.ports.grpc}"
    model = OnnxModel(SEMANTIC_V1_ONNX)
    answers = {v: _infer(url, FRAME, str(v)) for v in SPECS}
    for version, spec in SPECS.items():
        expected = Pipeline(spec).analyse(FRAME, model.run)
        assert len(answers[version]) == len(expected), f"version {version} did not run its own settings"
    assert len(answers[1]) != len(answers[2])
    latest = _infer(url, FRAME, "")
    assert len(latest) == len(answers[2]), "an unversioned request goes to the latest version"


def test_a_version_unloads_and_reloads_while_the_other_keeps_serving(triton_server: TritonOptions) -> None:
    url = f"127.0.0.1:{triton_server.ports.grpc}"
    errors: list[str] = []
    served = 0
    stop = threading.Event()

    def keep_using_version_1() -> None:
        nonlocal served
        while not stop.is_set():
            try:
                _infer(url, FRAME[:256, :256], "1")
                served += 1
            except Exception as exc:
                errors.append(str(exc))

    user = threading.Thread(target=keep_using_version_1)
    user.start()
    try:
        with triton.InferenceServerClient(url) as client:
            serve_versions(client, PIPELINE, [1])
            assert ready_versions(client, PIPELINE) == [1]
            assert ready_versions(client, f"{PIPELINE}_core") == [1]
            with pytest.raises(Exception, match=r"version 2 is not at ready state"):
                _infer(url, FRAME, "2")
            serve_versions(client, PIPELINE, [1, 2])
            assert ready_versions(client, PIPELINE) == [1, 2]
            assert len(_infer(url, FRAME, "2")) > 0
            with pytest.raises(RuntimeError, match=r"versions \[7\]"):
                serve_versions(client, PIPELINE, [1, 7])
            assert ready_versions(client, PIPELINE) == [1, 2], (
                "a failed change must leave the replica as it was"
            )
    finally:
        stop.set()
        user.join()
    assert errors == [] and served > 0


def test_metrics_are_labelled_per_version(triton_server: TritonOptions) -> None:
    _infer(f"127.0.0.1:{triton_server.ports.grpc}", FRAME[:256, :256], "1")
    _infer(f"127.0.0.1:{triton_server.ports.grpc}", FRAME[:256, :256], "2")
    metrics_url = f"http://127.0.0.1:{triton_server.ports.metrics}/metrics"
    text = urllib.request.urlopen(metrics_url, timeout=5).read().decode()
    for version in ("1", "2"):
        assert f'nv_inference_count{{model="{PIPELINE}",version="{version}"}}' in text
