"""The numbers users read, and how far they are from the truth (DESIGN.md section 4).

Per image: foreground percentage F (% of pixels inside loops), loop count N, mean full major axis
D and mean full minor axis Dm (px) of the ellipses fitted to the loops. Against ground truth:
relative errors ``Y_re = (Y_pred - Y_gt) / Y_gt * 100`` (%), the size error S_re = mean(D_re,
Dm_re), the reference paper's scores P1 and P2, and the F1 of loops matched one-to-one at mask
IoU >= 0.5. Everything is a small pure function of arrays or numbers.

Examples
--------
The paper's ResNeXt-101 row (F_re 1.01, N_re -3.68, D_re -10.03, Dm_re -3.54 %):

>>> round(p1(1.01, -3.68, size_error(-10.03, -3.54)), 1), round(p2(-3.68, -10.03, -3.54), 1)
(95.1, 83.6)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.optimize import linear_sum_assignment


@dataclass(frozen=True)
class ImageStatistics:
    """F (% of pixels), N (loops), D and Dm (mean full axes, px; NaN without loops)."""

    f_pct: float
    n: int
    d_px: float
    dm_px: float


def image_statistics(foreground: np.ndarray, loops: pd.DataFrame) -> ImageStatistics:
    """Statistics of one image from its loop mask and its loop ellipses (major_px, minor_px).

    >>> mask = np.zeros((10, 10), bool); mask[:5, :2] = True
    >>> image_statistics(mask, pd.DataFrame({"major_px": [4.0, 6.0], "minor_px": [2.0, 2.0]}))
    ImageStatistics(f_pct=10.0, n=2, d_px=5.0, dm_px=2.0)
    """
    n = len(loops)
    return ImageStatistics(
        f_pct=float(np.count_nonzero(foreground)) / foreground.size * 100.0,
        n=n,
        d_px=float(loops["major_px"].mean()) if n else float("nan"),
        dm_px=float(loops["minor_px"].mean()) if n else float("nan"),
    )


def pooled_statistics(masks: Sequence[np.ndarray], loops: Sequence[pd.DataFrame]) -> ImageStatistics:
    """Statistics of a set of images taken as one field: F over all pixels, N summed, D and Dm
    averaged over all loops (so an image with few loops weighs little in the sizes).

    >>> m = np.zeros((2, 2), bool); m[0, 0] = True
    >>> a = pd.DataFrame({"major_px": [4.0], "minor_px": [2.0]})
    >>> b = pd.DataFrame({"major_px": [], "minor_px": []})
    >>> pooled_statistics([m, ~m], [a, b])
    ImageStatistics(f_pct=50.0, n=1, d_px=4.0, dm_px=2.0)
    """
    pixels = sum(m.size for m in masks)
    inside = sum(int(np.count_nonzero(m)) for m in masks)
    return image_statistics(np.array([True] * inside + [False] * (pixels - inside)), pd.concat(list(loops)))


def relative_error(predicted: float, truth: float) -> float:
    """(predicted - truth) / truth in %; NaN when the truth is 0.

    >>> relative_error(90, 100), relative_error(3, 2)
    (-10.0, 50.0)
    """
    if truth == 0:
        return float("nan")
    return (predicted - truth) / truth * 100.0


def size_error(d_re: float, dm_re: float) -> float:
    """S_re (%): mean of the relative errors of the major and minor axes.

    >>> size_error(-10.0, -4.0)
    -7.0
    """
    return (d_re + dm_re) / 2.0


def p1(f_re: float, n_re: float, s_re: float) -> float:
    """The paper's P1 score from the relative errors (%) of F, N and the size; 99 when all are 0.

    >>> p1(0.0, 0.0, 0.0)
    99.0
    """
    return 100.0 - 6.0 / (1.0 / (1.0 + abs(f_re)) + 1.0 / (1.0 + abs(n_re)) + 4.0 / (1.0 + abs(s_re)))


def area_ratio_pct(n_re: float, d_re: float, dm_re: float) -> float:
    """Total loop area predicted over truth (%), A_tot = N * pi * D * Dm / 4.

    >>> round(area_ratio_pct(10.0, 0.0, -10.0), 6)
    99.0
    """
    return 100.0 * (1.0 + n_re / 100.0) * (1.0 + d_re / 100.0) * (1.0 + dm_re / 100.0)


def p2(n_re: float, d_re: float, dm_re: float) -> float:
    """The paper's P2 score: 100 minus the % deviation of the total loop area; 100 when exact.

    Equals ``area_ratio_pct`` for the paper's (underestimating) models and also penalises
    overestimates.

    >>> round(p2(-10.0, 0.0, 0.0), 6), round(p2(10.0, 0.0, 0.0), 6)
    (90.0, 90.0)
    """
    return 100.0 - abs(area_ratio_pct(n_re, d_re, dm_re) - 100.0)


def iou_matrix(labels: np.ndarray, truth: Sequence[np.ndarray]) -> np.ndarray:
    """Mask IoU [n_truth, n_pred] of predicted regions (label image, 0 = background) and truth masks.

    >>> lab = np.zeros((4, 4), np.int32); lab[:2, :2] = 1
    >>> t = np.zeros((4, 4), bool); t[:2, :1] = True
    >>> iou_matrix(lab, [t])
    array([[0.5]])
    """
    n_pred = int(labels.max(initial=0))
    pred_area = np.bincount(labels.ravel(), minlength=n_pred + 1)[1:]
    out = np.zeros((len(truth), n_pred))
    for i, mask in enumerate(truth):
        inter = np.bincount(labels[mask], minlength=n_pred + 1)[1:]
        union = pred_area + int(np.count_nonzero(mask)) - inter
        out[i] = inter / np.maximum(union, 1)
    return out


@dataclass(frozen=True)
class MatchScores:
    """Loops matched one-to-one at IoU >= the threshold; precision, recall, F1 in [0, 1]."""

    matched: int
    n_pred: int
    n_truth: int

    @property
    def precision(self) -> float:
        return self.matched / self.n_pred if self.n_pred else float(self.n_truth == 0)

    @property
    def recall(self) -> float:
        return self.matched / self.n_truth if self.n_truth else float(self.n_pred == 0)

    @property
    def f1(self) -> float:
        total = self.n_pred + self.n_truth
        return 2.0 * self.matched / total if total else 1.0

    def __add__(self, other: MatchScores) -> MatchScores:
        return MatchScores(
            self.matched + other.matched, self.n_pred + other.n_pred, self.n_truth + other.n_truth
        )


def match_loops(labels: np.ndarray, truth: Sequence[np.ndarray], min_iou: float = 0.5) -> MatchScores:
    """One-to-one matching of predicted regions to truth masks maximising total IoU; pairs below
    ``min_iou`` do not count (at 0.5 a pair is unique anyway, the assignment only matters below).

    >>> lab = np.zeros((8, 8), np.int32); lab[:4, :4] = 1; lab[6:, 6:] = 2
    >>> t = np.zeros((8, 8), bool); t[:4, :3] = True
    >>> s = match_loops(lab, [t]); (s.matched, s.n_pred, s.n_truth, round(s.f1, 3))
    (1, 2, 1, 0.667)
    """
    iou = iou_matrix(labels, truth)
    if iou.size == 0:
        return MatchScores(0, iou.shape[1], iou.shape[0])
    rows, cols = linear_sum_assignment(-iou)
    matched = int(np.count_nonzero(iou[rows, cols] >= min_iou))
    return MatchScores(matched, iou.shape[1], iou.shape[0])
