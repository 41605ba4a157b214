"""TorchScript export keeps the model's numbers (vs eager) and agrees with the ONNX export (vs ORT).

Both on a real creme tile (512 px, standardised like serving), with small randomly initialised
models exported here, so CI needs no checkpoint. Tolerances:

- TorchScript vs eager: the scripted graph runs the same ATen kernels; only a batch of 2 vs one
  image per call may change float32 summation order. Semantic: 1e-5 of the logits' largest
  magnitude (at least 1e-5 absolute). Instance: the same detections (count), boxes within
  1e-3 px, scores and mask probabilities within 1e-4.
- ONNX Runtime vs TorchScript: as the ONNX tests (ORT folds BatchNorm and sums in another order):
  semantic 1e-4 relative to the largest logit; instance the same detections, atol 2e-3 + rtol 1e-3.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from loopstream.models import export, export_instance
from loopstream.models.architectures import build_model
from loopstream.models.export_torchscript import (
    export_torchscript,
    instance_eager,
    instance_scripted,
    max_differences,
    real_tile,
)
from loopstream.models.maskrcnn import build_maskrcnn
from loopstream.models.predict import onnx_logits
from loopstream.serving.core_models import CORE_TENSORS
from tests.conftest import CREME_IMAGE

torch.set_num_threads(2)

needs_creme = pytest.mark.skipif(not CREME_IMAGE.exists(), reason=f"no creme-ds25s image at {CREME_IMAGE}")

TS_VS_EAGER_SEMANTIC = 1e-5  # relative to max |logit|
ORT_VS_TS_SEMANTIC = 1e-4  # relative to max |logit|
TS_VS_EAGER_INSTANCE = (1e-3, 1e-4, 1e-4)  # boxes px, scores, mask probabilities (absolute)
ORT_VS_TS_INSTANCE = dict(atol=2e-3, rtol=1e-3)


def _relative(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max()) / max(float(np.abs(b).max()), 1.0)


@pytest.fixture(scope="module")
def tile() -> np.ndarray:
    x = real_tile(CREME_IMAGE, 512)
    assert x.shape == (1, 1, 512, 512) and x.dtype == np.float32
    return x


@needs_creme
def test_semantic_torchscript_matches_eager_and_onnx_runtime(tmp_path, tile):
    torch.manual_seed(0)
    model = build_model("unet_r18").eval()
    with torch.no_grad():  # non-trivial BatchNorm statistics
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    scripted = torch.jit.load(str(export_torchscript("semantic", model, tmp_path / "model.pt")))
    with torch.no_grad():
        ts, ref = scripted(torch.from_numpy(tile)).numpy(), model(torch.from_numpy(tile)).numpy()
        # Dynamic N, H, W: a batch of two 256 x 384 crops.
        crops = np.concatenate([tile[:, :, :256, :384], tile[:, :, 256:, 128:]])
        ts_crops = scripted(torch.from_numpy(crops)).numpy()
        ref_crops = model(torch.from_numpy(crops)).numpy()
    assert ts.shape == (1, 2, 512, 512) and ts_crops.shape == (2, 2, 256, 384)
    assert _relative(ts, ref) <= TS_VS_EAGER_SEMANTIC
    assert _relative(ts_crops, ref_crops) <= TS_VS_EAGER_SEMANTIC
    path = export.export_onnx(model, tmp_path / "model.onnx")
    assert _relative(onnx_logits(path)(tile), ts) <= ORT_VS_TS_SEMANTIC
    assert len(CORE_TENSORS["torchscript", "semantic"].outputs) == 1


@needs_creme
def test_instance_torchscript_matches_eager_and_onnx_runtime(tmp_path, tile):
    torch.manual_seed(0)
    model = build_maskrcnn("maskrcnn_r18", detections_per_image=16).eval()
    scripted = torch.jit.load(str(export_torchscript("instance", model, tmp_path / "model.pt")))
    # Dynamic N, H, W: one batched call on two 256 px crops vs one eager call per crop.
    crops = np.concatenate([tile[:, :, :256, :256], tile[:, :, 256:, 256:]])
    with torch.no_grad():
        boxes, scores, masks, counts = scripted(torch.from_numpy(crops))
    assert boxes.shape[:2] == scores.shape == masks.shape[:2] and masks.shape[2:] == (28, 28)
    assert (
        counts.dtype == torch.int64
        and counts.shape == (2,)
        and len(CORE_TENSORS["torchscript", "instance"].outputs) == 4
    )
    ours = instance_scripted(scripted, crops)
    ref = instance_eager(model, crops)
    assert [len(o[1]) for o in ours] == [len(r[1]) for r in ref] and all(len(r[1]) for r in ref)
    for difference, tolerance in zip(max_differences(ours, ref), TS_VS_EAGER_INSTANCE, strict=True):
        assert difference <= tolerance
    # The full 512 px tile: TorchScript vs eager and ONNX Runtime vs TorchScript.
    ts_tile = instance_scripted(scripted, tile)
    for difference, tolerance in zip(
        max_differences(ts_tile, instance_eager(model, tile)), TS_VS_EAGER_INSTANCE, strict=True
    ):
        assert difference <= tolerance
    path = export_instance.export_onnx(model, tmp_path / "model.onnx", example_px=128)
    ort = export_instance.onnx_tile_fn(path)(tile)
    for a, b in zip(ort, ts_tile[0], strict=True):
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, **ORT_VS_TS_INSTANCE)
