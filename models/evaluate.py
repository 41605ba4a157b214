"""Evaluation CLI (``python -m loopstream.models.evaluate``): a pipeline version against annotations.

Predictions come from the served code path, nothing else: the version's ``pipeline.json`` read
once (``PipelineSpec``), its core network run in-process by the runtime Triton's glue uses
(``loopstream.serving.core_models``), and ``Pipeline.analyse`` (normalisation, resampling to the
network's pixel size, tiling, merging, thresholds); so the detections here are Triton's, loop for
loop (a test checks it). Both families, any version: ``--pipeline model_repository/loops_instance/3``
(its core network is ``loops_instance_core/3``), or a candidate with ``--pipeline DIR --network FILE``.

Per image and pooled (``loopstream.models.scoring``): F, N, D, Dm (px and nm), relative errors,
S_re, P1, P2 (DESIGN.md section 4), F1 of loops matched one-to-one by mask IoU and by ellipse IoU,
counts of degenerate annotations and predictions; COCO mask AP (pycocotools). Writes
``summary.csv``, ``loops/<image>.csv`` (every detection column, as the pipeline returns it) and
``overlays/<image>.png`` (truth outlines green, predicted ellipses red).

``--tune-ids`` chooses the threshold on *those* (training) images: the best pooled F1 among the
thresholds with pooled |N_re| <= 10 % (the smallest |N_re| if none reaches it), writes the sweep
(``threshold_sweep.csv``) and its F1 / N_re / P2 curve (``threshold_curve.png``), and evaluates
``--ids`` at it. The tuning images may come from several datasets, pooled: repeat ``--tune-coco``
with one ``--tune-ids`` each, in the same order (as training's ``--coco`` / ``--exclude-ids``);
without ``--tune-coco`` they are images of ``--coco``. ``--tune-mask-grid`` (instance) first
chooses the mask threshold on the same images: the one of smallest pooled |D_re| among those
whose F1, each at its own chosen score threshold, is within 0.01 of the best
(``mask_threshold_sweep.csv``).

Example (held-out creme images, the default instance version)::

    python -m loopstream.models.evaluate --pipeline model_repository/loops_instance/3 \\
        --coco ../shared/data/creme-ds25s/train/annotations.json --ids 3,7,11 --out eval/instance
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from tqdm import tqdm

from loopstream.core.masks import MaskCrop
from loopstream.core.simulator import SimulatedMicroscope, SimulationConfig
from loopstream.models.datasets import CocoLoops, instances_from_ellipses
from loopstream.models.scoring import Prediction, TruthImage, score_predictions
from loopstream.serving.core_models import open_core
from loopstream.serving.frames import PreparedFrame
from loopstream.serving.pipelines import CoreFn, Pipeline
from loopstream.serving.spec import PipelineSpec

PIXEL_NM = 200.0 / 512.0  # creme-ds25s: 200 nm field of view on 512 px
MAX_ABS_N_RE = 10.0  # the counting constraint of threshold choice (%)
MASK_F1_TOLERANCE = 0.01  # F1 a mask threshold may give up for sizes closer to the outlines
GRIDS = {
    "semantic": tuple(np.round(np.arange(0.2, 0.81, 0.05), 2)),
    "instance": tuple(np.round(np.arange(0.3, 0.96, 0.05), 2)),  # trained box scores crowd near 1
}


def coco_truth(coco: CocoLoops, ids: Sequence[int]) -> list[TruthImage]:
    """Images of ``coco`` with each annotation rasterised (COCO's own rule) within its box."""
    out = []
    for image_id in ids:
        info = coco.coco.loadImgs(image_id)[0]
        image = cv2.imread(str(coco.images_dir / info["file_name"]), cv2.IMREAD_UNCHANGED)
        if image is None:
            raise FileNotFoundError(coco.images_dir / info["file_name"])
        if image.ndim == 3:
            image = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
        masks, dropped = [], 0
        for ann in coco.coco.loadAnns(coco.coco.getAnnIds(imgIds=image_id, iscrowd=None)):
            crop = annotation_crop(ann, image.shape, coco.coco)
            if crop is None:
                dropped += 1
            else:
                masks.append(crop)
        out.append(TruthImage(Path(info["file_name"]).stem, image, masks, image_id, dropped))
    return out


def annotation_crop(ann: dict, shape: tuple[int, ...], coco: COCO) -> MaskCrop | None:
    """An annotation's mask within its box (None when it has no pixel in the (H, W) image)."""
    h, w = shape
    segmentation = ann["segmentation"]
    if not isinstance(segmentation, list):  # RLE: decode whole, then crop
        return _tight(coco.annToMask(ann).astype(bool), 0, 0)
    points = np.concatenate([np.asarray(r, np.float64).reshape(-1, 2) for r in segmentation if len(r) >= 2])
    x0, y0 = max(int(np.floor(points[:, 0].min())) - 1, 0), max(int(np.floor(points[:, 1].min())) - 1, 0)
    x1, y1 = min(int(np.ceil(points[:, 0].max())) + 2, w), min(int(np.ceil(points[:, 1].max())) + 2, h)
    if x1 <= x0 or y1 <= y0:
        return None  # wholly outside the image
    rings = [(np.asarray(r, np.float64).reshape(-1, 2) - (x0, y0)) for r in segmentation if len(r) >= 2]
    polygons = [r.ravel().tolist() for r in rings if len(r) >= 3]
    mask = np.zeros((y1 - y0, x1 - x0), bool)
    if polygons:
        mask = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(polygons, y1 - y0, x1 - x0))) > 0
    if not mask.any():  # an outline with no area (collinear, 2 points): the pixels it passes through
        canvas = np.zeros(mask.shape, np.uint8)
        cv2.polylines(canvas, [np.round(r).astype(np.int32) for r in rings], False, (1,))
        mask = canvas > 0
    return _tight(mask, x0, y0)


def _tight(mask: np.ndarray, x0: int, y0: int) -> MaskCrop | None:
    ys, xs = np.nonzero(mask)
    if not len(ys):
        return None
    return MaskCrop(
        x0 + int(xs.min()), y0 + int(ys.min()), mask[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
    )


def simulated_truth(seeds: Sequence[int], shape: tuple[int, int] = (512, 512)) -> list[TruthImage]:
    """One default-configuration (uint16) frame per seed, at frame index (97 * seed) % 1000 so that
    early (small loops) and late (grown, denser) frames are both represented."""
    out = []
    for seed in seeds:
        mic = SimulatedMicroscope(SimulationConfig(shape=shape), seed)
        frame = mic.frame((97 * seed) % mic.config.n_frames)
        crops = [_tight(m, 0, 0) for m in instances_from_ellipses(frame.truth, shape)]
        out.append(TruthImage(f"sim-{seed}-{frame.index}", frame.image, [c for c in crops if c is not None]))
    return out


def open_pipeline(
    version_dir: Path, network: Path | None = None, threads: int = 2
) -> tuple[Pipeline, CoreFn]:
    """A pipeline version of a repository (``<name>/<v>/pipeline.json``) and its core network run
    in-process (``<name>_core/<v>/``, or ``network``, a candidate file)."""
    version_dir = Path(version_dir)
    spec = PipelineSpec.read(version_dir / "pipeline.json")
    core_dir = version_dir.parent.parent / f"{version_dir.parent.name}_core" / version_dir.name
    core = open_core(core_dir if network is None else network, threads)
    return Pipeline(spec), core.run


class PipelineRun:
    """A pipeline's core answers for each image, kept so thresholds can be swept without
    running the network again (``finish`` is the served merge step, at any spec)."""

    def __init__(
        self, pipeline: Pipeline, core: CoreFn, images: Sequence[TruthImage], pixel_nm: float | None
    ) -> None:
        self.spec = pipeline.spec
        self.answers: list[tuple[PreparedFrame, list[dict[str, np.ndarray]]]] = []
        for img in tqdm(images, desc="core network", unit="image"):
            prepared = pipeline.prepare(img.image, pixel_nm)
            self.answers.append((prepared, [core(inputs) for inputs in pipeline.core_inputs(prepared)]))

    def with_mask_threshold(self, mask_threshold: float) -> PipelineRun:
        """The same core answers, their masks cut at another probability."""
        run = copy.copy(self)
        run.spec = replace(self.spec, mask_threshold=mask_threshold)
        return run

    def predictions(self, threshold: float | None = None) -> list[Prediction]:
        spec = self.spec if threshold is None else replace(self.spec, threshold=float(threshold))
        pipeline = Pipeline(spec)
        return [
            Prediction(*pipeline.finish(outputs, prepared, with_masks=True))
            for prepared, outputs in self.answers
        ]


def choose_threshold(
    images: Sequence[TruthImage], run: PipelineRun, pixel_nm: float, grid: Sequence[float]
) -> tuple[float, pd.DataFrame]:
    """The threshold of best pooled F1 with pooled |N_re| <= ``MAX_ABS_N_RE`` (else the smallest
    |N_re|), and the whole sweep."""
    sweep = []
    for t in grid:
        overall = score_predictions(images, run.predictions(t), pixel_nm).iloc[-1]
        sweep.append(
            dict(
                threshold=float(t),
                F1=overall.F1,
                F1_ellipse=overall.F1_ellipse,
                N_re=overall.N_re,
                D_re=overall.D_re,
                P1=overall.P1,
                P2=overall.P2,
            )
        )
    sweep = pd.DataFrame(sweep)
    allowed = sweep[sweep.N_re.abs() <= MAX_ABS_N_RE]
    best = allowed.F1.idxmax() if len(allowed) else sweep.N_re.abs().idxmin()
    return float(sweep.threshold[best]), sweep


def choose_mask_threshold(
    images: Sequence[TruthImage],
    run: PipelineRun,
    pixel_nm: float,
    mask_grid: Sequence[float],
    grid: Sequence[float],
) -> tuple[float, pd.DataFrame]:
    """(mask threshold, table): for each mask threshold the score threshold ``choose_threshold``
    picks and its figures, then the mask threshold of smallest pooled |D_re| among those
    within ``MASK_F1_TOLERANCE`` of the best F1; sizes are what a mask threshold changes, and
    the tolerance keeps it from trading matched loops for them."""
    rows = []
    for m in mask_grid:
        masked = run.with_mask_threshold(float(m))
        threshold, sweep = choose_threshold(images, masked, pixel_nm, grid)
        rows.append({"mask_threshold": float(m), **sweep[sweep.threshold == threshold].iloc[0].to_dict()})
    table = pd.DataFrame(rows)
    near_best = table[table.F1.max() - table.F1 <= MASK_F1_TOLERANCE]
    chosen = table.loc[near_best.D_re.abs().idxmin()]
    return float(chosen.mask_threshold), table


def plot_sweep(sweep: pd.DataFrame, chosen: float, path: Path) -> None:
    """F1, N_re and P2 against the threshold, the |N_re| <= 10 % band and the chosen threshold."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, left = plt.subplots(figsize=(6, 4), dpi=100)
    left.plot(sweep.threshold, sweep.F1, "o-", label="F1 (mask IoU)")
    left.plot(sweep.threshold, sweep.F1_ellipse, "s--", label="F1 (ellipse IoU)")
    left.plot(sweep.threshold, sweep.P2 / 100, "^-", label="P2 / 100")
    left.set_xlabel("threshold")
    left.set_ylabel("F1, P2 / 100")
    right = left.twinx()
    right.plot(sweep.threshold, sweep.N_re, "k:", label="N_re %")
    right.axhspan(-MAX_ABS_N_RE, MAX_ABS_N_RE, color="grey", alpha=0.15)
    right.set_ylabel("N_re %")
    left.axvline(chosen, color="red", lw=1)
    lines = left.get_legend_handles_labels()[0] + right.get_legend_handles_labels()[0]
    labels = left.get_legend_handles_labels()[1] + right.get_legend_handles_labels()[1]
    left.legend(lines, labels, fontsize=8, loc="lower left")
    left.set_title(f"threshold chosen on training images: {chosen}")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def coco_ap(
    coco: CocoLoops, images: Sequence[TruthImage], predictions: Sequence[Prediction]
) -> tuple[float, float]:
    """COCO mask AP@[.5:.95] and AP50 of the predicted loops (by their scores)."""
    from pycocotools.cocoeval import COCOeval

    results = []
    for img, pred in zip(images, predictions, strict=True):
        for crop, score in zip(pred.masks, pred.detections.score, strict=True):
            full = np.zeros(img.image.shape, np.uint8)
            h, w = crop.mask.shape
            full[crop.y0 : crop.y0 + h, crop.x0 : crop.x0 + w] = crop.mask
            rle = mask_utils.encode(np.asfortranarray(full))
            rle["counts"] = rle["counts"].decode()
            results.append(dict(image_id=img.image_id, category_id=1, segmentation=rle, score=float(score)))
    if not results:
        return 0.0, 0.0
    with contextlib.redirect_stdout(io.StringIO()):
        evaluation = COCOeval(coco.coco, coco.coco.loadRes(results), iouType="segm")
        evaluation.params.imgIds = [i.image_id for i in images]
        evaluation.params.catIds = coco.coco.getCatIds()[:1]
        evaluation.params.maxDets = [1, 10, 1000]  # dense frames hold hundreds of loops
        evaluation.evaluate()
        evaluation.accumulate()
    # precision [iou thresholds, recall, class, area range, max detections]: all areas, most dets
    precision = evaluation.eval["precision"][:, :, 0, 0, -1]
    valid = precision > -1
    if not valid.any():
        return 0.0, 0.0
    ap = float(precision[valid].mean())
    ap50 = float(precision[0][valid[0]].mean()) if valid[0].any() else 0.0
    return ap, ap50


def overlay(img: TruthImage, pred: Prediction) -> np.ndarray:
    """BGR picture: the frame, true loop outlines in green, predicted ellipses in red."""
    # OpenCV's stubs lack its documented dst=None (allocate the output).
    grey = cv2.normalize(img.image.astype(np.float32), None, 0, 255, cv2.NORM_MINMAX)  # type: ignore[call-overload]
    grey = grey.astype(np.uint8)
    picture = cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR)
    for crop in img.masks:
        contours, _ = cv2.findContours(
            crop.mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE, offset=(crop.x0, crop.y0)
        )
        cv2.drawContours(picture, contours, -1, (0, 200, 0), 1)
    for d in pred.detections.itertuples(index=False):
        axes = (max(round(d.major_px / 2), 1), max(round(d.minor_px / 2), 1))
        cv2.ellipse(picture, (round(d.x_px), round(d.y_px)), axes, float(d.angle_deg), 0, 360, (0, 0, 255), 1)
    return picture


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
    if coco is not None:
        ap, ap50 = coco_ap(coco, images, predictions)
        table.loc[table.index[-1], ["AP", "AP50"]] = [100 * ap, 100 * ap50]
    with pd.option_context("display.width", 250, "display.max_columns", 60):
        print(table.round(3).to_string(index=False))
    if out is not None:
        (out / "loops").mkdir(parents=True, exist_ok=True)
        (out / "overlays").mkdir(parents=True, exist_ok=True)
        table.to_csv(out / "summary.csv", index=False, float_format="%.4f")
        for img, pred in zip(images, predictions, strict=True):
            pred.detections.to_csv(out / "loops" / f"{img.name}.csv", index_label="loop", float_format="%.9g")
            cv2.imwrite(str(out / "overlays" / f"{img.name}.png"), overlay(img, pred))
    return table


def box_truth(boxes_file: Path) -> tuple[list[TruthImage], dict[str, np.ndarray]]:
    """Frames labelled with boxes only (``{"frames": {file: [[x0, y0, x1, y1], ...]}}``, the frames
    in ``frames/`` beside the file, as shen2021-fecral): images and each frame's boxes."""
    import json

    labelled = json.loads(Path(boxes_file).read_text())["frames"]
    images, boxes = [], {}
    for name, frame_boxes in sorted(labelled.items()):
        path = Path(boxes_file).parent / "frames" / name
        image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
        if image is None:
            raise FileNotFoundError(path)
        images.append(TruthImage(Path(name).stem, image, []))
        boxes[Path(name).stem] = np.asarray(frame_boxes, np.float64).reshape(-1, 4)
    return images, boxes


def count_table(
    images: Sequence[TruthImage], predictions: Sequence[Prediction], boxes: dict[str, np.ndarray]
) -> pd.DataFrame:
    """Per frame and pooled: labelled and predicted counts, N_re, and the F1 of predicted bounding
    boxes matched one-to-one to labelled boxes at box IoU >= 0.5."""
    import torch
    from scipy.optimize import linear_sum_assignment
    from torchvision.ops import box_iou

    rows = []
    for img, pred in zip(images, predictions, strict=True):
        truth = boxes[img.name]
        d = pred.detections
        predicted = np.stack(
            [d.bbox_x_px, d.bbox_y_px, d.bbox_x_px + d.bbox_width_px, d.bbox_y_px + d.bbox_height_px], 1
        )
        iou = box_iou(torch.as_tensor(truth), torch.as_tensor(predicted, dtype=torch.float64)).numpy()
        matched = 0
        if iou.size:
            r, c = linear_sum_assignment(-iou)
            matched = int(np.count_nonzero(iou[r, c] >= 0.5))
        rows.append(dict(image=img.name, N_gt=len(truth), N_pred=len(d), matched_box=matched))
    table = pd.DataFrame(rows)
    total = table[["N_gt", "N_pred", "matched_box"]].sum()
    table.loc[len(table)] = dict(image="overall", **total.to_dict())
    table["N_re"] = (table.N_pred - table.N_gt) / table.N_gt * 100
    table["F1_box"] = 2 * table.matched_box / (table.N_gt + table.N_pred)
    return table


def parse_grid(text: str) -> list[float]:
    """``"0.3,0.4,0.5"``: settings to try."""
    return [float(t) for t in text.split(",") if t.strip()]


def parse_ids(text: str) -> list[int]:
    """``"0:50"`` (a range) or ``"1,5,9"``."""
    if ":" in text:
        lo, hi = text.split(":")
        return list(range(int(lo), int(hi)))
    return [int(t) for t in text.split(",") if t.strip()]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pipeline", type=Path, required=True, help="pipeline version dir (holds pipeline.json)")
    p.add_argument("--network", type=Path, help="core network file (default: the version's own core)")
    p.add_argument("--coco", type=Path, help="COCO annotation file of the images to evaluate")
    p.add_argument("--images", type=Path, help="image folder of --coco (default: imgs/ beside it)")
    p.add_argument("--ids", help="COCO image ids to evaluate (default: all)")
    p.add_argument(
        "--tune-ids",
        action="append",
        help="COCO image ids to choose the threshold on (training images only); one per --tune-coco",
    )
    p.add_argument(
        "--tune-coco",
        type=Path,
        action="append",
        help="COCO annotation file of the next --tune-ids (repeat to pool datasets; default --coco)",
    )
    p.add_argument(
        "--tune-mask-grid",
        help="instance: also choose mask_threshold on the --tune-ids images from these, e.g. 0.3,0.4,0.5",
    )
    p.add_argument("--sim-seeds", help="evaluate simulated frames of these seeds instead, e.g. 0:50")
    p.add_argument("--boxes", type=Path, help="count against box labels instead (shen2021-fecral boxes.json)")
    p.add_argument("--threshold", type=float, help="override the version's threshold")
    p.add_argument("--pixel-nm", type=float, default=PIXEL_NM, help="pixel size of the images (nm/px)")
    p.add_argument(
        "--send-pixel-nm",
        action="store_true",
        help="give the pixel size to the pipeline, as a client does (resampled to the network's)",
    )
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, help="folder for summary.csv, loops/, overlays/, the sweep")
    args = p.parse_args(argv)
    if sum(x is not None for x in (args.coco, args.sim_seeds, args.boxes)) != 1:
        p.error("give exactly one of --coco, --sim-seeds and --boxes")
    tune_cocos = args.tune_coco or ([args.coco] if args.coco is not None else [])
    if args.tune_ids and len(tune_cocos) != len(args.tune_ids):
        p.error("give one --tune-ids per --tune-coco (or one --tune-ids with --coco)")
    if args.tune_mask_grid and not args.tune_ids:
        p.error("--tune-mask-grid chooses on the --tune-ids images: give them too")

    pipeline, core = open_pipeline(args.pipeline, args.network, args.threads)
    if args.threshold is not None:
        pipeline = Pipeline(replace(pipeline.spec, threshold=args.threshold))
    sent_nm = args.pixel_nm if args.send_pixel_nm else None
    coco = None if args.coco is None else CocoLoops(args.coco, args.images)
    if args.boxes is not None:
        images, boxes = box_truth(args.boxes)
        table = count_table(images, PipelineRun(pipeline, core, images, sent_nm).predictions(), boxes)
        print(table.round(3).to_string(index=False))
        if args.out is not None:
            args.out.mkdir(parents=True, exist_ok=True)
            table.to_csv(args.out / "counts.csv", index=False, float_format="%.4f")
        return
    if coco is not None:
        images = coco_truth(coco, parse_ids(args.ids) if args.ids else coco.ids)
    else:
        images = simulated_truth(parse_ids(args.sim_seeds))

    if args.tune_ids:
        tune = [
            img
            for path, ids in zip(tune_cocos, args.tune_ids, strict=True)
            for img in coco_truth(
                CocoLoops(path) if coco is None or path != args.coco else coco, parse_ids(ids)
            )
        ]
        tune_run = PipelineRun(pipeline, core, tune, sent_nm)
        if args.tune_mask_grid:
            if pipeline.spec.family != "instance":
                p.error("--tune-mask-grid is for instance pipelines (a semantic one has no mask threshold)")
            mask_threshold, masks = choose_mask_threshold(
                tune, tune_run, args.pixel_nm, parse_grid(args.tune_mask_grid), GRIDS["instance"]
            )
            print(masks.round(3).to_string(index=False))
            print(f"mask threshold chosen on images {' + '.join(args.tune_ids)}: {mask_threshold}")
            if args.out is not None:
                args.out.mkdir(parents=True, exist_ok=True)
                masks.to_csv(args.out / "mask_threshold_sweep.csv", index=False, float_format="%.4f")
            pipeline = Pipeline(replace(pipeline.spec, mask_threshold=mask_threshold))
            tune_run = tune_run.with_mask_threshold(mask_threshold)
        threshold, sweep = choose_threshold(tune, tune_run, args.pixel_nm, GRIDS[pipeline.spec.family])
        print(sweep.round(3).to_string(index=False))
        print(f"threshold chosen on images {' + '.join(args.tune_ids)}: {threshold}")
        if args.out is not None:
            args.out.mkdir(parents=True, exist_ok=True)
            sweep.to_csv(args.out / "threshold_sweep.csv", index=False, float_format="%.4f")
            plot_sweep(sweep, threshold, args.out / "threshold_curve.png")
        pipeline = Pipeline(replace(pipeline.spec, threshold=threshold))

    predictions = PipelineRun(pipeline, core, images, sent_nm).predictions()
    report(images, predictions, coco, args.pixel_nm, args.out)
    print(f"threshold {pipeline.spec.threshold}, mask threshold {pipeline.spec.mask_threshold}")


if __name__ == "__main__":
    main()
