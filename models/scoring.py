"""Scoring predicted loops against annotated ones: per image and pooled, by mask and ellipse IoU.

Loops on both sides are kept as masks within their boxes (``MaskCrop``), never as full-frame
masks: a 2048² hirst-ti frame has ~500 annotated loops. Each loop's size is the ellipse of its
outer contour (``loopstream.core.ellipses.ellipse_of_contour``), truth and prediction alike.

Real annotations hold degenerate outlines (a polygon of fewer than 5 points, collinear points, a
polygon that encloses no pixel). **Rule**: an annotated loop is kept wherever it has a pixel in
the image: an outline enclosing no area is taken as the pixels it passes through
(``evaluate.annotation_crop``); only an annotation wholly outside the image is dropped, and
counted (``gt_dropped``). A loop whose outline ``cv2.fitEllipse`` cannot honestly fit is
measured by its minimum-area rectangle (``ellipse_of_contour``) and counted (``gt_degenerate``,
``pred_degenerate``). No loop is ever given an axis longer than twice its own extent.

Matching is one-to-one (``scipy.optimize.linear_sum_assignment`` on the IoU), a pair counting at
IoU >= 0.5, twice: by mask IoU (``F1``) and by the IoU of the two fitted ellipses (``F1_ellipse``,
the independent scorer's rule: predicted ellipse against annotated outline's ellipse).

Examples
--------
>>> a = MaskCrop(0, 0, np.ones((4, 4), bool))
>>> b = MaskCrop(2, 0, np.ones((4, 4), bool))
>>> round(crop_iou(a, b), 3), crop_iou(a, MaskCrop(10, 10, np.ones((2, 2), bool)))
(0.333, 0.0)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import cv2
import numpy as np
import pandas as pd
from scipy.optimize import linear_sum_assignment

from loopstream.core import measures
from loopstream.core.ellipses import detections_from_labels, ellipse_fit_is_degenerate, empty_detections
from loopstream.core.masks import MaskCrop
from loopstream.models.targets import draw_ellipse

MIN_IOU = 0.5


@dataclass
class TruthImage:
    name: str
    image: np.ndarray
    masks: list[MaskCrop]  # one per annotated loop that has pixels
    image_id: int | None = None  # COCO id, for AP
    dropped: int = 0  # annotations wholly outside the image (see the module's rule)
    loops: pd.DataFrame = field(init=False)  # ellipse of each loop (loopstream.core.detections.LOOP_COLUMNS)

    def __post_init__(self) -> None:
        self.loops = loops_of_masks(self.masks)


@dataclass
class Prediction:
    detections: pd.DataFrame  # loopstream.core.detections.LOOP_COLUMNS, as the pipeline returns them
    masks: list[MaskCrop]  # row for row


def loops_of_masks(masks: Sequence[MaskCrop]) -> pd.DataFrame:
    """One ellipse row per mask, fitted exactly as the pipelines fit predictions."""
    rows = []
    for crop in masks:
        det = detections_from_labels(crop.mask.astype(np.int32))
        det[["x_px", "bbox_x_px"]] += crop.x0
        det[["y_px", "bbox_y_px"]] += crop.y0
        rows.append(det)
    return pd.concat(rows, ignore_index=True) if rows else empty_detections()


def degenerate_count(masks: Sequence[MaskCrop]) -> int:
    """Masks whose outer contour ``cv2.fitEllipse`` cannot honestly fit (measured by rectangle)."""
    count = 0
    for crop in masks:
        contours, _ = cv2.findContours(crop.mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        count += bool(contours) and ellipse_fit_is_degenerate(max(contours, key=len))
    return count


def foreground(masks: Sequence[MaskCrop], shape: tuple[int, ...]) -> np.ndarray:
    """The union of the masks as an image of the frame's (H, W) ``shape`` (masks lie within it)."""
    out = np.zeros(shape, bool)
    for crop in masks:
        h, w = crop.mask.shape
        out[crop.y0 : crop.y0 + h, crop.x0 : crop.x0 + w] |= crop.mask
    return out


def ellipse_crops(loops: pd.DataFrame) -> list[MaskCrop]:
    """Each loop's fitted ellipse rasterised within its own box (for ellipse IoU)."""
    out = []
    for d in loops.itertuples(index=False):
        r = int(np.ceil(max(d.major_px, 1.0) / 2)) + 2
        x0, y0 = int(np.floor(d.x_px)) - r, int(np.floor(d.y_px)) - r
        mask = np.zeros((2 * r + 2, 2 * r + 2), np.uint8)
        draw_ellipse(mask, d.x_px - x0, d.y_px - y0, d.major_px, d.minor_px, d.angle_deg)
        out.append(MaskCrop(x0, y0, mask.astype(bool)))
    return out


def crop_iou(a: MaskCrop, b: MaskCrop) -> float:
    """IoU of two masks given within their boxes (frame px)."""
    (ah, aw), (bh, bw) = a.mask.shape, b.mask.shape
    x0, y0 = max(a.x0, b.x0), max(a.y0, b.y0)
    x1, y1 = min(a.x0 + aw, b.x0 + bw), min(a.y0 + ah, b.y0 + bh)
    if x1 <= x0 or y1 <= y0:
        return 0.0
    inter = np.count_nonzero(
        a.mask[y0 - a.y0 : y1 - a.y0, x0 - a.x0 : x1 - a.x0]
        & b.mask[y0 - b.y0 : y1 - b.y0, x0 - b.x0 : x1 - b.x0]
    )
    union = np.count_nonzero(a.mask) + np.count_nonzero(b.mask) - inter
    return float(inter / union) if union else 0.0


def crop_iou_matrix(truth: Sequence[MaskCrop], predicted: Sequence[MaskCrop]) -> np.ndarray:
    """IoU [n_truth, n_pred], computed only for pairs whose boxes overlap."""
    out = np.zeros((len(truth), len(predicted)))
    if not len(truth) or not len(predicted):
        return out
    boxes = np.array([(c.x0, c.y0, c.x0 + c.mask.shape[1], c.y0 + c.mask.shape[0]) for c in predicted])
    for i, t in enumerate(truth):
        th, tw = t.mask.shape
        near = np.nonzero(
            (boxes[:, 0] < t.x0 + tw)
            & (boxes[:, 2] > t.x0)
            & (boxes[:, 1] < t.y0 + th)
            & (boxes[:, 3] > t.y0)
        )[0]
        for j in near:
            out[i, j] = crop_iou(t, predicted[j])
    return out


def match(truth: Sequence[MaskCrop], predicted: Sequence[MaskCrop]) -> measures.MatchScores:
    """One-to-one matching maximising total IoU; pairs below ``MIN_IOU`` do not count."""
    iou = crop_iou_matrix(truth, predicted)
    if iou.size == 0:
        return measures.MatchScores(0, len(predicted), len(truth))
    rows, cols = linear_sum_assignment(-iou)
    return measures.MatchScores(int(np.count_nonzero(iou[rows, cols] >= MIN_IOU)), len(predicted), len(truth))


def image_row(
    name: str,
    truth: measures.ImageStatistics,
    pred: measures.ImageStatistics,
    by_mask: measures.MatchScores,
    by_ellipse: measures.MatchScores,
    pixel_nm: float,
) -> dict:
    """One summary row: statistics (px, nm), relative errors (%), P1, P2, matching scores."""
    f_re = measures.relative_error(pred.f_pct, truth.f_pct)
    n_re = measures.relative_error(pred.n, truth.n)
    d_re = measures.relative_error(pred.d_px, truth.d_px)
    dm_re = measures.relative_error(pred.dm_px, truth.dm_px)
    s_re = measures.size_error(d_re, dm_re)
    return dict(
        image=name,
        F_gt_pct=truth.f_pct,
        F_pred_pct=pred.f_pct,
        N_gt=truth.n,
        N_pred=pred.n,
        D_gt_px=truth.d_px,
        D_pred_px=pred.d_px,
        Dm_gt_px=truth.dm_px,
        Dm_pred_px=pred.dm_px,
        D_gt_nm=truth.d_px * pixel_nm,
        D_pred_nm=pred.d_px * pixel_nm,
        Dm_gt_nm=truth.dm_px * pixel_nm,
        Dm_pred_nm=pred.dm_px * pixel_nm,
        F_re=f_re,
        N_re=n_re,
        D_re=d_re,
        Dm_re=dm_re,
        S_re=s_re,
        P1=measures.p1(f_re, n_re, s_re),
        P2=measures.p2(n_re, d_re, dm_re),
        matched=by_mask.matched,
        precision=by_mask.precision,
        recall=by_mask.recall,
        F1=by_mask.f1,
        matched_ellipse=by_ellipse.matched,
        F1_ellipse=by_ellipse.f1,
    )


def score_predictions(
    images: Sequence[TruthImage], predictions: Sequence[Prediction], pixel_nm: float
) -> pd.DataFrame:
    """Per-image rows plus a last ``overall`` row (pooled statistics, summed matches), with the
    counts of degenerate and dropped annotations and of degenerate predictions."""
    rows = []
    total_mask = total_ellipse = measures.MatchScores(0, 0, 0)
    truth_fg, pred_fg = [], []
    for img, pred in zip(images, predictions, strict=True):
        by_mask = match(img.masks, pred.masks)
        by_ellipse = match(ellipse_crops(img.loops), ellipse_crops(pred.detections))
        total_mask, total_ellipse = total_mask + by_mask, total_ellipse + by_ellipse
        truth_fg.append(foreground(img.masks, img.image.shape))
        pred_fg.append(foreground(pred.masks, img.image.shape))
        row = image_row(
            img.name,
            measures.image_statistics(truth_fg[-1], img.loops),
            measures.image_statistics(pred_fg[-1], pred.detections),
            by_mask,
            by_ellipse,
            pixel_nm,
        )
        row.update(
            gt_degenerate=degenerate_count(img.masks),
            gt_dropped=img.dropped,
            pred_degenerate=degenerate_count(pred.masks),
        )
        rows.append(row)
    truth_all = measures.pooled_statistics(truth_fg, [i.loops for i in images])
    pred_all = measures.pooled_statistics(pred_fg, [p.detections for p in predictions])
    overall = image_row("overall", truth_all, pred_all, total_mask, total_ellipse, pixel_nm)
    for key in ("gt_degenerate", "gt_dropped", "pred_degenerate"):
        overall[key] = sum(r[key] for r in rows)
    rows.append(overall)
    table = pd.DataFrame(rows)
    table.loc[table.index[-1], "mean_abs_N_re"] = float(table.iloc[:-1]["N_re"].abs().mean())
    return table
