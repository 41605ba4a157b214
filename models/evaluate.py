"""Evaluation CLI (``python -m loopstream.models.evaluate``): per-image and overall loop metrics.

For each image: F, N, D, Dm (px and nm) of prediction and truth, their relative errors, S_re, P1,
P2 (DESIGN.md section 4, ``loopstream.core.measures``) and precision / recall / F1 of loops matched at
mask IoU >= 0.5; overall, the same on all images pooled (F over all pixels, N summed, sizes
averaged over all loops) plus COCO mask AP (pycocotools) for COCO datasets. Writes
``summary.csv`` (one row per image and an ``overall`` row), ``loops/<image>.csv`` (one row per
predicted loop: centre, full axes, angle, like the reference's analysis.csv) and
``overlays/<image>.png`` (truth contours green, predicted ellipses red).

``--tune-ids`` picks the probability threshold on *those* images (training images; never the
held-out ones) and then evaluates ``--ids`` with it.

Examples::

    python -m loopstream.models.evaluate --model model_repository/loops_semantic_core/1/model.onnx \\
        --coco ../shared/data/creme-ds25s/train/annotations.json --ids 3,7,11 --out eval/creme
    python -m loopstream.models.evaluate --model model.onnx --sim-seeds 0:50 --out eval/sim
"""

from __future__ import annotations

import argparse
import contextlib
import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from loopstream.core import measures
from loopstream.core.ellipses import detections_from_labels, empty_detections
from loopstream.core.simulator import SimulatedMicroscope, SimulationConfig
from loopstream.models.datasets import CocoLoops, instances_from_ellipses
from loopstream.models.predict import (
    DEFAULT_THRESHOLD,
    LogitsFn,
    Prediction,
    frame_probabilities,
    label_probabilities,
    load_logits_fn,
)

PIXEL_NM = 200.0 / 512.0  # creme-ds25s: 200 nm field of view on 512 px
THRESHOLD_GRID = tuple(np.round(np.arange(0.2, 0.81, 0.05), 2))


@dataclass
class TruthImage:
    name: str
    image: np.ndarray
    instances: list[np.ndarray]  # one binary mask per true loop
    image_id: int | None = None  # COCO id, for AP

    @property
    def loops(self) -> pd.DataFrame:
        """Ellipse of each true loop, fitted exactly as predictions are (loopstream.core.ellipses)."""
        rows = [detections_from_labels(m.astype(np.int32)) for m in self.instances if m.any()]
        return pd.concat(rows, ignore_index=True) if rows else empty_detections()

    @property
    def foreground(self) -> np.ndarray:
        return np.logical_or.reduce(self.instances) if self.instances else np.zeros(self.image.shape, bool)


def coco_images(coco: CocoLoops, ids: Sequence[int]) -> list[TruthImage]:
    return [TruthImage(s.name, s.image, s.instances, i) for i, s in ((i, coco.sample(i)) for i in ids)]


def simulated_images(seeds: Sequence[int], shape: tuple[int, int] = (512, 512)) -> list[TruthImage]:
    """One default-configuration (uint16) frame per seed, at frame index (97 * seed) % 1000 so that
    early (small loops) and late (grown, denser) frames are both represented."""
    out = []
    for seed in seeds:
        mic = SimulatedMicroscope(SimulationConfig(shape=shape), seed)
        frame = mic.frame((97 * seed) % mic.config.n_frames)
        out.append(
            TruthImage(f"sim-{seed}-{frame.index}", frame.image, instances_from_ellipses(frame.truth, shape))
        )
    return out


def image_row(
    name: str, truth: measures.ImageStatistics, pred: measures.ImageStatistics, match, pixel_nm: float
):
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
        matched=match.matched,
        precision=match.precision,
        recall=match.recall,
        F1=match.f1,
    )


def score_predictions(
    images: Sequence[TruthImage], predictions: Sequence[Prediction], pixel_nm: float = PIXEL_NM
) -> pd.DataFrame:
    """Per-image rows plus a last ``overall`` row (pooled statistics, summed matches)."""
    rows, total = [], measures.MatchScores(0, 0, 0)
    for img, pred in zip(images, predictions, strict=True):
        match = measures.match_loops(pred.labels, img.instances)
        total = total + match
        truth_stats = measures.image_statistics(img.foreground, img.loops)
        pred_stats = measures.image_statistics(pred.labels > 0, pred.detections)
        rows.append(image_row(img.name, truth_stats, pred_stats, match, pixel_nm))
    truth_all = measures.pooled_statistics([i.foreground for i in images], [i.loops for i in images])
    pred_all = measures.pooled_statistics(
        [p.labels > 0 for p in predictions], [p.detections for p in predictions]
    )
    rows.append(image_row("overall", truth_all, pred_all, total, pixel_nm))
    table = pd.DataFrame(rows)
    per_image = table.iloc[:-1]
    table.loc[table.index[-1], "mean_abs_N_re"] = float(per_image["N_re"].abs().mean())
    return table


def tune_threshold(
    images: Sequence[TruthImage], probabilities: Sequence[np.ndarray], grid: Sequence[float] = THRESHOLD_GRID
) -> tuple[float, pd.DataFrame]:
    """Threshold maximising (100 * F1 + P1 + P2) / 3 of the pooled images, and the whole sweep."""
    sweep = []
    for t in grid:
        overall = score_predictions(images, [label_probabilities(p, float(t)) for p in probabilities]).iloc[
            -1
        ]
        sweep.append(dict(threshold=float(t), F1=overall.F1, P1=overall.P1, P2=overall.P2, N_re=overall.N_re))
    sweep = pd.DataFrame(sweep)
    sweep["score"] = (100 * sweep.F1 + sweep.P1 + sweep.P2) / 3
    return float(sweep.threshold[sweep.score.idxmax()]), sweep


def coco_ap(
    coco: CocoLoops, images: Sequence[TruthImage], predictions: Sequence[Prediction]
) -> tuple[float, float]:
    """COCO mask AP@[.5:.95] and AP50 of the predicted loops (score: mean foreground probability)."""
    from pycocotools import mask as mask_utils
    from pycocotools.cocoeval import COCOeval

    results = []
    for img, pred in zip(images, predictions, strict=True):
        for label, score in zip(
            range(1, int(pred.labels.max(initial=0)) + 1), pred.detections.score, strict=True
        ):
            rle = mask_utils.encode(np.asfortranarray((pred.labels == label).astype(np.uint8)))
            rle["counts"] = rle["counts"].decode()
            results.append(dict(image_id=img.image_id, category_id=1, segmentation=rle, score=float(score)))
    if not results:
        return 0.0, 0.0
    with contextlib.redirect_stdout(io.StringIO()):
        evaluation = COCOeval(coco.coco, coco.coco.loadRes(results), iouType="segm")
        evaluation.params.imgIds = [i.image_id for i in images]
        evaluation.params.catIds = coco.coco.getCatIds()[:1]
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    return float(evaluation.stats[0]), float(evaluation.stats[1])


def write_outputs(
    out: Path, images: Sequence[TruthImage], predictions: Sequence[Prediction], pixel_nm: float
) -> None:
    (out / "loops").mkdir(parents=True, exist_ok=True)
    (out / "overlays").mkdir(parents=True, exist_ok=True)
    for img, pred in zip(images, predictions, strict=True):
        loops = pred.detections[
            ["x_px", "y_px", "major_px", "minor_px", "angle_deg", "area_px", "score"]
        ].copy()
        for col in ("x", "y", "major", "minor"):
            loops[f"{col}_nm"] = loops[f"{col}_px"] * pixel_nm
        loops.index.name = "loop"
        loops.to_csv(out / "loops" / f"{img.name}.csv", float_format="%.3f")
        cv2.imwrite(str(out / "overlays" / f"{img.name}.png"), overlay(img, pred))


def report(
    images: Sequence[TruthImage],
    predictions: Sequence[Prediction],
    coco: CocoLoops | None,
    pixel_nm: float,
    out: Path | None,
) -> pd.DataFrame:
    """Print the summary table (and COCO mask AP where the truth is COCO); with ``out``, write
    ``summary.csv`` and the per-image loop CSVs and overlays there."""
    table = score_predictions(images, predictions, pixel_nm)
    with pd.option_context("display.width", 250, "display.max_columns", 40):
        print(table.round(3).to_string(index=False))
    if coco is not None:
        ap, ap50 = coco_ap(coco, images, predictions)
        print(f"COCO mask AP {100 * ap:.1f}, AP50 {100 * ap50:.1f}")
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        table.to_csv(out / "summary.csv", index=False, float_format="%.4f")
        write_outputs(out, images, predictions, pixel_nm)
    return table


def overlay(img: TruthImage, pred: Prediction) -> np.ndarray:
    """BGR picture: the frame, true loop outlines in green, predicted ellipses in red."""
    grey = cv2.normalize(img.image.astype(np.float32), None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)
    picture = cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR)
    for mask in img.instances:
        contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(picture, contours, -1, (0, 200, 0), 1)
    for d in pred.detections.itertuples(index=False):
        axes = (max(round(d.major_px / 2), 1), max(round(d.minor_px / 2), 1))
        cv2.ellipse(picture, (round(d.x_px), round(d.y_px)), axes, float(d.angle_deg), 0, 360, (0, 0, 255), 1)
    return picture


def parse_seeds(text: str) -> list[int]:
    """``"0:50"`` (a range) or ``"1,5,9"``."""
    if ":" in text:
        lo, hi = text.split(":")
        return list(range(int(lo), int(hi)))
    return [int(t) for t in text.split(",")]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, required=True, help="model.onnx or a training checkpoint")
    p.add_argument("--coco", type=Path, help="COCO annotation file of the images to evaluate")
    p.add_argument("--images", type=Path, help="image folder of --coco (default: imgs/ beside it)")
    p.add_argument("--ids", help="COCO image ids to evaluate (default: all)")
    p.add_argument("--tune-ids", help="COCO image ids to choose the threshold on (training images only)")
    p.add_argument("--sim-seeds", help="evaluate simulated frames of these seeds instead, e.g. 0:50")
    p.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD, help="probability threshold")
    p.add_argument("--pixel-nm", type=float, default=PIXEL_NM, help="pixel size (nm/px)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, help="folder for summary.csv, loops/ and overlays/")
    args = p.parse_args(argv)
    if (args.coco is None) == (args.sim_seeds is None):
        p.error("give exactly one of --coco and --sim-seeds")

    logits_fn: LogitsFn = load_logits_fn(args.model, args.threads)
    coco = None
    if args.coco is not None:
        coco = CocoLoops(args.coco, args.images)
        images = coco_images(coco, [int(i) for i in args.ids.split(",")] if args.ids else coco.ids)
    else:
        images = simulated_images(parse_seeds(args.sim_seeds))

    threshold = args.threshold
    if args.tune_ids:
        if coco is None:
            p.error("--tune-ids needs --coco")
        tune = coco_images(coco, [int(i) for i in args.tune_ids.split(",")])
        threshold, sweep = tune_threshold(tune, [frame_probabilities(logits_fn, i.image) for i in tune])
        print(sweep.round(3).to_string(index=False))
        print(f"threshold chosen on images {args.tune_ids}: {threshold}")

    predictions = [label_probabilities(frame_probabilities(logits_fn, i.image), threshold) for i in images]
    report(images, predictions, coco, args.pixel_nm, args.out)
    print(f"threshold {threshold}")


if __name__ == "__main__":
    main()
