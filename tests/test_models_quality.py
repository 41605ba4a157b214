"""The default semantic model finds loops: simulated counts and held-out real images.

Held-out creme images 3, 7 and 11 were never used for training or for choosing the threshold.
The floors here are regression guards well below the measured figures (see the README's model
card), not the targets.
"""

from __future__ import annotations

import numpy as np
import pytest

from loopstream.models.datasets import CocoLoops
from loopstream.models.evaluate import PIXEL_NM, PipelineRun, coco_truth, open_pipeline, simulated_truth
from loopstream.models.scoring import score_predictions
from loopstream.serving.triton import REPOSITORY
from tests.conftest import CORE_MODEL, CREME, default_version

HELD_OUT_IDS = [3, 7, 11]
DEFAULT = REPOSITORY / "loops_semantic" / default_version("loops_semantic")


def _scores(images):
    """The default pipeline version as served (its spec, its network, the served code path)."""
    pipeline, core = open_pipeline(DEFAULT)
    return score_predictions(images, PipelineRun(pipeline, core, images, PIXEL_NM).predictions(), PIXEL_NM)


pytestmark = pytest.mark.skipif(not CORE_MODEL.exists(), reason="no shipped model.onnx")


def test_counts_simulated_loops_within_20_percent():
    table = _scores(simulated_truth(range(6)))  # seeds below 10000: never trained on
    per_image = table.iloc[:-1]
    assert per_image["N_re"].abs().mean() < 20.0, per_image[["image", "N_gt", "N_pred"]]
    assert table.iloc[-1]["F1"] > 0.7


@pytest.mark.skipif(not CREME.exists(), reason=f"no creme-ds25s data at {CREME}")
def test_finds_loops_in_held_out_real_images():
    overall = _scores(coco_truth(CocoLoops(CREME), HELD_OUT_IDS)).iloc[-1]
    assert overall["F1"] > 0.2, overall
    assert np.isfinite(overall["P1"]) and overall["P1"] > 60.0, overall
