"""Scale-aware pipelines through a real tritonserver: a frame is analysed at its network's pixel size.

The session's pixel size reaches the pipeline as the request parameter ``pixel_nm``; the frame is
resampled to the pixel size its network was trained at (``pipeline.json``'s ``pixel_nm``) before
tiling, and the loops come back in the frame's own px. So the same sample seen by a 2x binned
camera gives the same loops in nm.
"""

from __future__ import annotations

import numpy as np
import pytest
import tritonclient.grpc as triton
from tritonclient.utils import InferenceServerException

from loopstream.core.simulator import SimulatedMicroscope, SimulationConfig
from loopstream.dev.stack import LocalStack
from loopstream.serving.spec import PipelineSpec
from loopstream.serving.triton import REPOSITORY
from tests.conftest import default_version

PIPELINE = "loops_instance"  # the bright-field default
NETWORK_NM = PipelineSpec.read(REPOSITORY / PIPELINE / default_version(PIPELINE) / "pipeline.json").pixel_nm
FRAME = SimulatedMicroscope(SimulationConfig(shape=(1024, 1024)), seed=5).frame(600).image
BINNED = FRAME.reshape(512, 2, 512, 2).mean(axis=(1, 3)).round().astype(FRAME.dtype)  # 2x2 binning


def _infer(url: str, frame: np.ndarray, pixel_nm: float | None) -> np.ndarray:
    with triton.InferenceServerClient(url) as client:
        tensor = triton.InferInput("FRAME_U16", list(frame.shape), "UINT16")
        tensor.set_data_from_numpy(frame)
        parameters = None if pixel_nm is None else {"pixel_nm": pixel_nm}
        return client.infer(PIPELINE, [tensor], parameters=parameters).as_numpy("DETECTIONS")


def test_the_shipped_pipelines_record_their_networks_pixel_size() -> None:
    for pipeline in ("loops_semantic", "loops_instance"):
        spec = PipelineSpec.read(REPOSITORY / pipeline / default_version(pipeline) / "pipeline.json")
        assert spec.pixel_nm == pytest.approx(200 / 512), "trained on creme-ds25s / simulator frames"


@pytest.fixture(scope="module")
def answers(stack: LocalStack) -> dict[str, np.ndarray]:
    """Each frame through the served pipeline once (a 1024² frame is 9 tiles on a shared CPU)."""
    return {
        "full": _infer(stack.triton_url, FRAME, NETWORK_NM),
        "binned": _infer(stack.triton_url, BINNED, 2 * NETWORK_NM),
        "as_is": _infer(stack.triton_url, BINNED, None),
    }


def test_a_2x_binned_frame_gives_the_same_loops_in_nm(answers: dict[str, np.ndarray]) -> None:
    full, binned = answers["full"], answers["binned"]
    assert len(full) > 30
    assert abs(len(binned) - len(full)) <= 0.05 * len(full), (len(full), len(binned))
    d_full, d_binned = full[:, 3].mean() * NETWORK_NM, binned[:, 3].mean() * 2 * NETWORK_NM
    assert abs(d_binned - d_full) <= 0.05 * d_full, (d_full, d_binned)
    # mapped back to the binned frame's own px: centres inside it, at half the full frame's
    assert binned[:, 1].max() < 512 and binned[:, 2].max() < 512
    assert np.median(binned[:, 1]) == pytest.approx(np.median(full[:, 1]) / 2, rel=0.05)


def test_without_its_pixel_size_a_binned_frame_is_analysed_as_it_comes(
    answers: dict[str, np.ndarray],
) -> None:
    """The control: unresampled, the network sees loops at half their trained size."""
    full, as_is = answers["full"], answers["as_is"]
    d_full, d_as_is = full[:, 3].mean() * NETWORK_NM, as_is[:, 3].mean() * 2 * NETWORK_NM
    assert abs(d_as_is - d_full) > 0.05 * d_full, "resampling should matter for this frame"


@pytest.mark.parametrize(("pixel_nm", "message"), [(40.0, "resamples by at most 4x"), (-1.0, "positive")])
def test_an_impossible_pixel_size_is_an_invalid_argument(
    stack: LocalStack, pixel_nm: float, message: str
) -> None:
    with pytest.raises(InferenceServerException, match=message) as error:
        _infer(stack.triton_url, BINNED, pixel_nm)
    assert "INVALID_ARG" in str(error.value.status())
    assert _infer(stack.triton_url, BINNED[:64, :64], 2 * NETWORK_NM).shape[1] == 11, "still serving"
