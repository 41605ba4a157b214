"""The default semantic model finds loops: simulated counts and held-out real images.

Held-out creme images 3, 7 and 11 were never used for training or for choosing the threshold.
The floors here are regression guards well below the measured figures (see the README's model
card), not the targets.
"""

from __future__ import annotations

import numpy as np
import pytest

from loopstream.models.datasets import CocoLoops
from loopstream.models.evaluate import coco_images, score_predictions, simulated_images
from loopstream.models.predict import frame_probabilities, label_probabilities, onnx_logits
from loopstream.serving.pipelines import PipelineSpec
from loopstream.serving.triton import REPOSITORY
from tests.conftest import CORE_MODEL, CREME, default_version

HELD_OUT_IDS = [3, 7, 11]
SPEC = PipelineSpec.read(REPOSITORY / "loops_semantic" / default_version("loops_semantic") / "pipeline.json")


def _predict(run, image: np.ndarray):
    """The default pipeline version's post-processing settings, as served."""
    return label_probabilities(frame_probabilities(run, image), SPEC.threshold, SPEC.min_area_px)


pytestmark = pytest.mark.skipif(not CORE_MODEL.exists(), reason="no shipped model.onnx")


def test_counts_simulated_loops_within_20_percent():
    images = simulated_images(range(6))  # seeds below 10000: never trained on
    run = onnx_logits(CORE_MODEL)
    table = score_predictions(images, [_predict(run, i.image) for i in images])
    per_image = table.iloc[:-1]
    assert per_image["N_re"].abs().mean() < 20.0, per_image[["image", "N_gt", "N_pred"]]
    assert table.iloc[-1]["F1"] > 0.7


@pytest.mark.skipif(not CREME.exists(), reason=f"no creme-ds25s data at {CREME}")
def test_finds_loops_in_held_out_real_images():
    images = coco_images(CocoLoops(CREME), HELD_OUT_IDS)
    run = onnx_logits(CORE_MODEL)
    overall = score_predictions(images, [_predict(run, i.image) for i in images]).iloc[-1]
    assert overall["F1"] > 0.2, overall
    assert np.isfinite(overall["P1"]) and overall["P1"] > 60.0, overall
