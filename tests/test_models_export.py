"""ONNX export keeps the model's numbers, and the shipped core model honours its contract.

Tolerance: ONNX Runtime and eager PyTorch differ only by float32 summation order and the
exporter's BatchNorm folding, measured here at ~1e-5 of the logit range; we allow 1e-4 of the
logits' largest magnitude (at least 1e-4 absolute).
"""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from loopstream.core.imaging import standardise
from loopstream.models.architectures import build_model
from loopstream.models.export import export_onnx
from loopstream.models.predict import onnx_logits, torch_logits

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("LOOPSTREAM_DATA", ROOT.parent / "shared" / "data"))
CREME_IMAGES = DATA / "creme-ds25s" / "train" / "imgs"
SHIPPED = ROOT / "model_repository" / "loops_semantic_core" / "1" / "model.onnx"
RELATIVE_TOLERANCE = 1e-4


def _real_tile() -> np.ndarray:
    image = cv2.imread(str(CREME_IMAGES / "3.png"), cv2.IMREAD_GRAYSCALE)
    return standardise(image)[None, None, :, :]


def _assert_close(a: np.ndarray, b: np.ndarray) -> None:
    scale = max(float(np.abs(b).max()), 1.0)
    assert float(np.abs(a - b).max()) <= RELATIVE_TOLERANCE * scale


@pytest.mark.skipif(not CREME_IMAGES.exists(), reason=f"no creme-ds25s data at {CREME_IMAGES}")
def test_onnx_runtime_matches_eager_on_a_real_image(tmp_path):
    torch.manual_seed(0)
    model = build_model("unet_r18").eval()
    with torch.no_grad():  # non-trivial BatchNorm statistics, so folding them is really exercised
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    path = export_onnx(model, tmp_path / "model.onnx")
    x = _real_tile()
    _assert_close(onnx_logits(path)(x), torch_logits(model)(x))
    # Dynamic N, H, W: a batch of two crops of another size gives the same numbers as eager.
    crops = np.concatenate([x[:, :, :256, :384], x[:, :, 256:, 128:]])
    _assert_close(onnx_logits(path)(crops), torch_logits(model)(crops))


@pytest.mark.skipif(not SHIPPED.exists(), reason="no shipped model.onnx")
def test_shipped_model_contract():
    run = onnx_logits(SHIPPED)
    import onnxruntime as ort

    session = ort.InferenceSession(str(SHIPPED), providers=["CPUExecutionProvider"])
    (inp,), (out,) = session.get_inputs(), session.get_outputs()
    assert (inp.name, inp.type, out.name, out.type) == ("image", "tensor(float)", "logits", "tensor(float)")
    assert SHIPPED.stat().st_size <= 25e6
    for shape in [(1, 1, 512, 512), (3, 1, 64, 96)]:
        logits = run(np.zeros(shape, np.float32))
        assert logits.shape == (shape[0], 2, *shape[2:]) and logits.dtype == np.float32
