"""Evaluation CLI for instance models (``python -m loopstream.models.evaluate_instance``).

The frame goes through the serving pipeline (``loopstream.serving.instance_merge``: standardise, tiles,
core model, ownership + mask NMS, detectron2 mask pasting, ellipses); scoring, the summary table,
per-loop CSVs, overlays and COCO mask AP are ``loopstream.models.evaluate``'s, so instance and
semantic models are measured identically. Where masks overlap, the higher-scoring loop owns the
pixel (for F and the IoU matching).

``--tune-ids`` picks the box-score threshold on those (training) images by the same criterion as
the semantic threshold, then evaluates ``--ids`` with it.

Example (held-out creme images)::

    python -m loopstream.models.evaluate_instance --model build/instance/model.onnx \\
        --coco ../shared/data/creme-ds25s/train/annotations.json --ids 3,7,11 --out eval/instance
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from loopstream.core.imaging import cut_tiles
from loopstream.models.datasets import CocoLoops
from loopstream.models.evaluate import (
    PIXEL_NM,
    TruthImage,
    coco_images,
    report,
    score_predictions,
)
from loopstream.models.export_instance import load_instance_checkpoint, onnx_tile_fn, torch_tile_fn
from loopstream.models.predict import Prediction
from loopstream.serving.frames import PreparedFrame
from loopstream.serving.instance_merge import (
    InstancePipelineConfig,
    TileDetections,
    detections_from_instances,
    frame_instances,
    label_instances,
    prepare_frame,
)

# Box scores of a trained Mask R-CNN crowd near 1 for real loops: the grid reaches higher than
# the semantic probability grid.
SCORE_GRID = tuple(np.round(np.arange(0.3, 0.96, 0.05), 2))


def tile_outputs(run, frame: np.ndarray, config: InstancePipelineConfig, raw_input: bool):
    """The prepared frame and the core model's output for each of its tiles."""
    prepared = prepare_frame(frame, config)
    if raw_input:  # imported detectron2 models normalise 8-bit counts themselves
        image = frame.astype(np.float32)
        prepared = PreparedFrame(prepared.shape, prepared.tiles, cut_tiles(image, prepared.tiles), image)
    outputs = [TileDetections(*run(prepared.tiles_input[i : i + 1])) for i in range(len(prepared.tiles))]
    return prepared, outputs


def prediction(prepared: PreparedFrame, outputs: Sequence[TileDetections], config) -> Prediction:
    """Labels and detections of one frame; loops hidden entirely under better ones are dropped."""
    instances = frame_instances(outputs, prepared, config)
    visible = set(np.unique(label_instances(instances, prepared.shape)).tolist()) - {0}
    instances = [inst for i, inst in enumerate(instances) if i + 1 in visible]
    labels = label_instances(instances, prepared.shape)
    return Prediction(np.zeros((0,), np.float32), labels, detections_from_instances(instances))


def tune_score_threshold(
    images: Sequence[TruthImage], raw: list, config: InstancePipelineConfig
) -> tuple[float, pd.DataFrame]:
    """Score threshold maximising (100 * F1 + P1 + P2) / 3 on ``images`` (never held-out ones)."""
    sweep = []
    for t in SCORE_GRID:
        c = replace(config, score_threshold=float(t))
        overall = score_predictions(images, [prediction(p, o, c) for p, o in raw]).iloc[-1]
        sweep.append(dict(threshold=float(t), F1=overall.F1, P1=overall.P1, P2=overall.P2, N_re=overall.N_re))
    sweep = pd.DataFrame(sweep)
    sweep["score"] = (100 * sweep.F1 + sweep.P1 + sweep.P2) / 3
    return float(sweep.threshold[sweep.score.idxmax()]), sweep


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--model", type=Path, required=True, help="model.onnx or a checkpoint (last.pt / model.pt)"
    )
    p.add_argument("--coco", type=Path, required=True, help="COCO annotation file of the images")
    p.add_argument("--images", type=Path, help="image folder of --coco (default: imgs/ beside it)")
    p.add_argument("--ids", help="COCO image ids to evaluate (default: all)")
    p.add_argument("--tune-ids", help="COCO image ids to choose the score threshold on (training images)")
    p.add_argument("--score-threshold", type=float, default=InstancePipelineConfig.score_threshold)
    p.add_argument("--raw-input", action="store_true", help="feed 8-bit counts (imported detectron2 models)")
    p.add_argument("--pixel-nm", type=float, default=PIXEL_NM, help="pixel size (nm/px)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, help="folder for summary.csv, loops/ and overlays/")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.model.suffix == ".onnx":
        run = onnx_tile_fn(args.model, args.threads)
    else:
        run = torch_tile_fn(load_instance_checkpoint(args.model))
    config = InstancePipelineConfig(score_threshold=args.score_threshold)
    coco = CocoLoops(args.coco, args.images)

    if args.tune_ids:
        tune = coco_images(coco, [int(i) for i in args.tune_ids.split(",")])
        raw = [tile_outputs(run, i.image, config, args.raw_input) for i in tune]
        threshold, sweep = tune_score_threshold(tune, raw, config)
        print(sweep.round(3).to_string(index=False))
        print(f"score threshold chosen on images {args.tune_ids}: {threshold}")
        config = replace(config, score_threshold=threshold)

    images = coco_images(coco, [int(i) for i in args.ids.split(",")] if args.ids else coco.ids)
    predictions = [prediction(*tile_outputs(run, i.image, config, args.raw_input), config) for i in images]
    report(images, predictions, coco, args.pixel_nm, args.out)
    print(f"score threshold {config.score_threshold}")


if __name__ == "__main__":
    main()
