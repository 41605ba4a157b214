"""The numbers users read (loopstream.core.measures) against the paper's own table and known geometry."""

from __future__ import annotations

import cv2
import numpy as np
import pandas as pd
import pytest

from loopstream.core import measures

# DESIGN.md section 4: backbone, F_re, N_re, D_re, Dm_re (%), then the paper's P1 and P2.
PAPER_TABLE = [
    ("ResNeXt-101 200 nm", 1.01, -3.68, -10.03, -3.54, 95.1, 83.6),
    ("ResNet-50 200 nm", 0.10, -0.15, -13.27, -6.01, 97.2, 81.4),
    ("ResNet-50 400 nm", 0.94, -4.07, -15.71, -12.54, 93.9, 70.7),
    ("ResNet-18 533 nm", -13.02, -11.74, -21.09, -19.92, 82.1, 55.8),
]


@pytest.mark.parametrize(("name", "f_re", "n_re", "d_re", "dm_re", "p1", "p2"), PAPER_TABLE)
def test_reproduces_paper_p1_p2(name, f_re, n_re, d_re, dm_re, p1, p2):
    s_re = measures.size_error(d_re, dm_re)
    assert measures.p1(f_re, n_re, s_re) == pytest.approx(p1, abs=0.1), name
    assert measures.p2(n_re, d_re, dm_re) == pytest.approx(p2, abs=0.1), name
    # The paper's P2 is the area ratio itself: all its models underestimate.
    assert measures.area_ratio_pct(n_re, d_re, dm_re) == pytest.approx(p2, abs=0.1), name


def test_p2_penalises_overestimates_like_underestimates():
    assert measures.p2(20.0, 0.0, 0.0) == pytest.approx(measures.p2(-20.0, 0.0, 0.0))
    assert measures.p2(0.0, 0.0, 0.0) == pytest.approx(100.0)


def test_relative_error_of_zero_truth_is_nan():
    assert np.isnan(measures.relative_error(3.0, 0.0))
    assert measures.relative_error(75.0, 100.0) == pytest.approx(-25.0)


def _ellipse_mask(shape, centre, axes, angle):
    mask = np.zeros(shape, np.uint8)
    cv2.ellipse(mask, centre, axes, angle, 0, 360, 1, -1)
    return mask.astype(bool)


def test_matching_counts_only_pairs_above_iou():
    shape = (128, 128)
    truth = [_ellipse_mask(shape, (30, 30), (12, 8), 20), _ellipse_mask(shape, (90, 90), (10, 10), 0)]
    labels = np.zeros(shape, np.int32)
    labels[_ellipse_mask(shape, (31, 30), (12, 8), 20)] = 1  # nearly the first loop: IoU ~ 0.9
    labels[_ellipse_mask(shape, (90, 104), (10, 10), 0)] = 2  # shifted by 14 px: IoU < 0.5
    labels[_ellipse_mask(shape, (100, 20), (6, 6), 0)] = 3  # false positive
    iou = measures.iou_matrix(labels, truth)
    assert iou.shape == (2, 3)
    assert iou[0, 0] > 0.8
    assert 0 < iou[1, 1] < 0.5
    scores = measures.match_loops(labels, truth)
    assert (scores.matched, scores.n_pred, scores.n_truth) == (1, 3, 2)
    assert scores.f1 == pytest.approx(2 * 1 / 5)
    assert scores.precision == pytest.approx(1 / 3)
    assert scores.recall == pytest.approx(1 / 2)


def test_empty_prediction_scores_zero_recall():
    truth = [_ellipse_mask((32, 32), (16, 16), (5, 4), 0)]
    scores = measures.match_loops(np.zeros((32, 32), np.int32), truth)
    assert (scores.matched, scores.recall, scores.f1) == (0, 0.0, 0.0)


def test_image_statistics_of_drawn_ellipses():
    shape = (200, 200)
    ellipses = [((50, 60), (20, 10), 30), ((140, 120), (16, 12), 100)]
    masks = [_ellipse_mask(shape, *e) for e in ellipses]
    loops = pd.DataFrame({"major_px": [40.0, 32.0], "minor_px": [20.0, 24.0]})
    stats = measures.image_statistics(np.logical_or(*masks), loops)
    # cv2 fills the boundary pixels too: each semi-axis is effectively 0.5 px longer.
    expected_f = (np.pi * 20.5 * 10.5 + np.pi * 16.5 * 12.5) / (200 * 200) * 100
    assert stats.f_pct == pytest.approx(expected_f, rel=0.02)
    assert (stats.n, stats.d_px, stats.dm_px) == (2, 36.0, 22.0)


def test_pooled_statistics_weigh_loops_not_images():
    one = pd.DataFrame({"major_px": [10.0], "minor_px": [5.0]})
    three = pd.DataFrame({"major_px": [20.0, 20.0, 20.0], "minor_px": [10.0, 10.0, 10.0]})
    empty = np.zeros((10, 10), bool)
    pooled = measures.pooled_statistics([empty, empty], [one, three])
    assert pooled.n == 4
    assert pooled.d_px == pytest.approx(17.5)
    assert pooled.dm_px == pytest.approx(8.75)
